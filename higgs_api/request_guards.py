"""ASGI middlewares that refuse a request by its framing, its content type or its body before any route
works on it: ambiguous framing (400, connection closed), a JSON route called with another content type
(415), a body over its size limit (413) or not arrived in time (408)."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyRefused
from .middleware import send_error

CLOSE = [(b"connection", b"close")]


class FramingRule:
    """A request with both `Content-Length` and `Transfer-Encoding` is refused and its connection closed
    (RFC 9112, section 6.1): a proxy that frames the body by its length and this server, which frames
    it by its encoding, would disagree on where the next request starts (request smuggling)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                return await send_error(send, 400, "the request has both Content-Length and Transfer-Encoding; "
                                        "send one of them", scope["path"], CLOSE)
        await self.app(scope, receive, send)


def _media_type(scope: Scope) -> str:
    header = dict(scope["headers"]).get(b"content-type", b"")
    return header.split(b";", 1)[0].strip().lower().decode("latin-1")


class JsonContentType:
    """The JSON routes take `application/json` bodies only. Web pages may send `text/plain` or form
    bodies to any site without a CORS preflight: accepting them would let any page a visitor opens drive
    a server on their machine or network that has no keys."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            kind = _media_type(scope)
            if kind != "application/json" and not kind.endswith("+json"):
                sent = f"Content-Type {kind}" if kind else "no Content-Type"
                return await send_error(send, 415, f"this route takes a JSON body: send it with the header "
                                        f"'Content-Type: application/json' (the request has {sent})", scope["path"])
        await self.app(scope, receive, send)


class BodyGuard:
    """Refuses bodies above their size limit with 413 (by Content-Length up front, or as a chunked
    body streams in) and bodies not wholly received within `timeout_s` with 408, so a client that
    trickles its body cannot hold a connection and a request's memory for long. However the app
    handles the refusal raised to it (BentoML turns any error while it reads a body into a 500), the
    answer is the refusal, and the connection is closed (the rest of the body is never read)."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_path: str, max_upload_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.upload_path, self.max_upload_bytes = upload_path, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = self.max_upload_bytes if path == self.upload_path else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, self._too_large(limit), path)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0
        refusal: BodyRefused | None = None
        body_done = started = answered = False

        async def guarded_receive() -> Message:
            nonlocal received, refusal, body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                refusal = BodyRefused(408, f"the request body did not arrive within {self.timeout_s:g} s "
                                           f"(HIGGS_BODY_TIMEOUT_S)")
                raise refusal from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refusal = self._too_large(limit)
                    raise refusal
                body_done = not message.get("more_body", False)
            return message

        async def refusing_send(message: Message) -> None:
            nonlocal started, answered
            if refusal is not None and not started:
                if not answered:
                    answered = True
                    await self._refuse(send, refusal, path)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, refusing_send)
        except BodyRefused:
            pass
        if refusal is not None and not started and not answered:
            await self._refuse(send, refusal, path)

    @staticmethod
    def _too_large(limit: int) -> BodyRefused:
        return BodyRefused(413, f"request body is larger than the limit of {limit // (1024 * 1024)} MiB")

    @staticmethod
    async def _refuse(send: Send, refusal: BodyRefused, path: str) -> None:
        await send_error(send, refusal.status, refusal.detail, path, CLOSE)
