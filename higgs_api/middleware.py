"""ASGI middlewares that hold the HTTP contract on every route, BentoML's own included: request
ids, optional API keys (401), work stopped when the client goes away (499 when it left mid-body), and
error bodies: `{"detail": "<message>"}` on the seed's routes, OpenAI's `{"error": {"message", "type",
"code", "param"}}` under /v1/. Client errors are logged as one line each."""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import re
import uuid

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import INTERNAL_ERROR, OPENAI_PREFIX, BodyRefused

log = logging.getLogger("higgs_audio.http")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _json_body(status: int, detail: str, path: str = "", param: str | None = None,
               code: str | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    payload = _openai_error(status, detail, param, code) if path.startswith(OPENAI_PREFIX) else {"detail": detail}
    body = json.dumps(payload).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


def _openai_error(status: int, message: str, param: str | None, code: str | None) -> dict:
    kind, default_code = {
        401: ("authentication_error", "invalid_api_key"),
        404: ("invalid_request_error", "not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }.get(status, ("server_error", None) if status >= 500 else ("invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "code": code or default_code, "param": param}}


async def send_error(send: Send, status: int, detail: str, path: str, extra_headers=(), websocket: bool = False) -> None:
    """Answers an error in the shape of `path`'s API, before or instead of the app; on a WebSocket
    handshake, as its HTTP answer (ASGI's denial response)."""
    headers, body = _json_body(status, detail, path)
    kind = "websocket.http.response" if websocket else "http.response"
    await send({"type": f"{kind}.start", "status": status, "headers": headers + list(extra_headers)})
    await send({"type": f"{kind}.body", "body": body})


def loggable_path(path: str, limit: int = 200) -> str:
    """A path as log lines show it: a client may send megabytes of URL."""
    return path if len(path) <= limit else f"{path[:limit]}... ({len(path)} characters)"


class RequestId:
    """Every response carries `X-Request-ID`: the client's, when it sent a sane one, else a new one.
    Log lines written while serving the request carry it too (see `RequestIdLogFilter`)."""

    _ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,128}")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if self._ACCEPTED.fullmatch(sent) else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagging_send)
        finally:
            request_id_var.reset(token)


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.msg = f"[request {record.request_id}] {record.msg}"
        return True


class ApiKeys:
    """The server's API keys (none: the server is open). Keys are compared as bytes, as they arrive: a
    header value may hold any byte (HTTP allows obs-text), and a comparison on text would fail on it
    instead of refusing it."""

    def __init__(self, keys: frozenset[str]):
        self._keys = frozenset(key.encode() for key in keys)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def accepts(self, key: bytes) -> bool:
        return any(hmac.compare_digest(key, known) for known in self._keys)

    def accepts_header(self, header: bytes) -> bool:
        """`Authorization: Bearer <key>`."""
        scheme, _, key = header.partition(b" ")
        return scheme.lower() == b"bearer" and self.accepts(key.strip())


def authorization(scope: Scope) -> bytes:
    return dict(scope["headers"]).get(b"authorization", b"")


class ApiKeyAuth:
    """With keys configured, every HTTP route but the open ones needs `Authorization: Bearer <key>`. (The
    live WebSocket route checks its own: a browser cannot set headers there, so it may send the key in
    its first message.)"""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: frozenset[str]):
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.required or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        header = authorization(scope)
        if self.keys.accepts_header(header):
            return await self.app(scope, receive, send)
        detail = "invalid API key" if header else "missing API key: send the header 'Authorization: Bearer <key>'"
        await send_error(send, 401, detail, scope["path"], [(b"www-authenticate", b"Bearer")])


class CancelOnDisconnect:
    """Cancels the app's work on a request when the client goes away before the response is complete,
    so generation stops within a step on every route. BentoML's routes never look for a disconnect
    themselves. Once the app has read the whole body, this middleware listens for the disconnect and
    hands it on to the app too (starlette's streaming responses wait for it).

    A client that leaves while sending its body is answered (and counted in the request metrics) as
    499, client closed request: whatever the app makes of the cut body (BentoML: a 500) is not a
    server fault."""

    LEFT_MID_BODY = 499

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_read, client_gone = asyncio.Event(), asyncio.Event()
        response_started = response_complete = False

        async def app_receive() -> Message:
            if body_read.is_set():
                await client_gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal response_started, response_complete
            if client_gone.is_set() and not body_read.is_set():
                if not response_started:
                    await self._left_mid_body(send, scope["path"])
                response_started = response_complete = True
                return
            response_started = True
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        async def watch_for_disconnect() -> None:
            await body_read.wait()
            # The server also answers `http.disconnect` once the response is complete.
            if (await receive())["type"] == "http.disconnect" and not response_complete:
                client_gone.set()
                work.cancel()

        work = asyncio.create_task(self.app(scope, app_receive, app_send))
        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await work
        except (asyncio.CancelledError, ClientDisconnect):
            if not client_gone.is_set():
                raise
            if body_read.is_set():
                log.info("%s %s: the client went away before the response was complete; its work was stopped",
                         scope["method"], loggable_path(scope["path"]))
        finally:
            watcher.cancel()
            work.cancel()  # no-op once done; stops the work if this middleware itself is cancelled
        if client_gone.is_set() and not body_read.is_set() and not response_started:
            await self._left_mid_body(send, scope["path"])  # ErrorContract logs it as the client error it is

    @classmethod
    async def _left_mid_body(cls, send: Send, path: str) -> None:
        await send_error(send, cls.LEFT_MID_BODY, "the client closed the connection before sending the whole body", path)


def _error_fields(status: int, body: bytes) -> tuple[str, str | None, str | None]:
    """The message, field (`param`) and code of any error body: ours (`{"detail", "param"}`),
    OpenAI's, BentoML's `{"error": ...}`, a validation list, plain text."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode(errors="replace").strip()
        return text or f"HTTP {status}", None, None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        if isinstance(data.get("detail"), str):
            return data["detail"], data.get("param"), data.get("code")
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"], error.get("param"), error.get("code")
        if isinstance(data.get("detail"), list):
            return "; ".join(_validation_message(error) for error in data["detail"]), None, None
        if isinstance(error, str):
            return (INTERNAL_ERROR if status >= 500 else error), None, None
    return f"HTTP {status}", None, None


def _validation_message(error: dict) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
    message = error.get("msg", "invalid value")
    if "JSON" in message or error.get("type") == "json_invalid":
        return f"request body is not valid JSON: {message}"
    return f"{location}: {message}" if location else message


class ErrorContract:
    """Rewrites every error response (status >= 400) into the error shape of its route, and logs each
    client error (4xx) as one line."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                else:
                    start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            status = start["status"]
            detail, param, code = _error_fields(status, b"".join(chunks))
            if status < 500:
                log.info("%s %s answered %d: %s", scope["method"], loggable_path(scope["path"]), status, detail[:300])
            headers, body = _json_body(status, detail, scope["path"], param, code)
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
            await send({"type": "http.response.start", "status": status, "headers": kept + headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting_send)


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every exception of an API call at ERROR with a traceback, client mistakes included
    (invalid fields, a refused upload form, an oversized body). Those are answered 4xx and logged as
    one line by ErrorContract; this filter drops BentoML's records of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (ValidationError, BodyRefused, ClientDisconnect)):
            return False
        return not (isinstance(error, BentoMLException) and error.error_code < 500)
