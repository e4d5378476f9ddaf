"""ASGI middlewares that hold the REST contract on every route, BentoML's own included:
request bodies have a size limit (413), and every error body is `{"detail": "<message>"}`."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _json_body(status: int, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"detail": detail}).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


class BodySizeLimit:
    """Refuses bodies above `max_bytes` (by Content-Length up front, or while streaming in)."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_path: str, max_upload_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.upload_path, self.max_upload_bytes = upload_path, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_upload_bytes if scope["path"] == self.upload_path else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
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
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        headers, body = _json_body(413, f"request body is larger than the limit of {limit // (1024 * 1024)} MiB")
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
    """Rewrites every error response (status >= 400) whose body is not already `{"detail": str}`."""

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
            headers, body = _json_body(status, _detail_from(status, b"".join(chunks)))
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
            await send({"type": "http.response.start", "status": status, "headers": kept + headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting_send)
