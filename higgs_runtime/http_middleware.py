"""ASGI middlewares that hold the HTTP contract on every route, BentoML's own included: request
ids, optional API keys (401), request body limits (413), and error bodies: `{"detail": "<message>"}`
on the seed's routes, OpenAI's `{"error": {"message", "type", "code"}}` under /v1/."""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send


OPENAI_PREFIX = "/v1/"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _json_body(status: int, detail: str, path: str = "") -> tuple[list[tuple[bytes, bytes]], bytes]:
    payload = _openai_error(status, detail) if path.startswith(OPENAI_PREFIX) else {"detail": detail}
    body = json.dumps(payload).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


def _openai_error(status: int, message: str) -> dict:
    kind, code = {
        401: ("authentication_error", "invalid_api_key"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }.get(status, ("server_error", None) if status >= 500 else ("invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


async def _send_error(send: Send, status: int, detail: str, path: str, extra_headers=()) -> None:
    headers, body = _json_body(status, detail, path)
    await send({"type": "http.response.start", "status": status, "headers": headers + list(extra_headers)})
    await send({"type": "http.response.body", "body": body})


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


class ApiKeyAuth:
    """With keys configured, every route but the open ones needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, keys: frozenset[str], open_paths: frozenset[str]):
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        if not header:
            detail = "missing API key: send the header 'Authorization: Bearer <key>'"
        elif scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in self.keys):
            detail = "invalid API key"
        else:
            return await self.app(scope, receive, send)
        await _send_error(send, 401, detail, scope["path"], [(b"www-authenticate", b"Bearer")])


class BodySizeLimit:
    """Refuses bodies above `max_bytes` (by Content-Length up front, or while streaming in)."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_path: str, max_upload_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.upload_path, self.max_upload_bytes = upload_path, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = self.max_upload_bytes if path == self.upload_path else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit, path)
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._refuse(send, limit, path)

    @staticmethod
    async def _refuse(send: Send, limit: int, path: str) -> None:
        await _send_error(send, 413, f"request body is larger than the limit of {limit // (1024 * 1024)} MiB", path)


class _TooLarge(Exception):
    pass


def _detail_from(status: int, body: bytes) -> str:
    """Turns any error body (BentoML's `{"error": ...}`, a validation list, plain text) into one message."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode(errors="replace").strip()
        return text or f"HTTP {status}"
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        if isinstance(data.get("detail"), str):
            return data["detail"]
        if isinstance(data.get("error"), dict) and isinstance(data["error"].get("message"), str):
            return data["error"]["message"]
        if isinstance(data.get("detail"), list):
            return "; ".join(_validation_message(error) for error in data["detail"])
        if isinstance(data.get("error"), str):
            if status >= 500:
                return "internal server error; the server log has the details"
            return data["error"]
    return f"HTTP {status}"


def _validation_message(error: dict) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
    message = error.get("msg", "invalid value")
    if "JSON" in message or error.get("type") == "json_invalid":
        return f"request body is not valid JSON: {message}"
    return f"{location}: {message}" if location else message


class ErrorContract:
    """Rewrites every error response (status >= 400) into the error shape of its route."""

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
            headers, body = _json_body(status, _detail_from(status, b"".join(chunks)), scope["path"])
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
            await send({"type": "http.response.start", "status": status, "headers": kept + headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting_send)
