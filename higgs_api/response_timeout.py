"""BentoML's traffic timeout, without the memory it held.

BentoML 1.4's `TimeoutMiddleware` arms a timer for every request and never disarms it: a finished
request stays referenced from the event loop's timer heap for the whole timeout, with its future and
the context it ran in (its OpenTelemetry span among it). A worker's memory therefore grew with the
request rate times the timeout (630 s here): about 10 MiB a minute under mixed traffic, for ten
minutes, before it levelled off. `ResponseTimeout` answers the same 504 when a request has sent
nothing within the timeout, and disarms its timer the moment the response starts or the request ends.
"""

from __future__ import annotations

import asyncio
import contextvars

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .middleware import send_error


class ResponseTimeout:
    """504 (in the route's error shape) for a request that has not started its response within
    `timeout` seconds; once it has, it may take as long as it needs (a stream, a live session)."""

    def __init__(self, app: ASGIApp, timeout: float):
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = asyncio.current_task()
        expired = started = False

        def expire() -> None:
            nonlocal expired
            expired = True
            request.cancel()

        # A disarmed timer waits in the loop's heap until its time: armed in an empty context, it holds
        # nothing of the request once disarmed (asyncio.timeout would keep the request's context).
        timer = asyncio.get_running_loop().call_later(self.timeout, expire, context=contextvars.Context())

        async def send_and_stop_the_clock(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                timer.cancel()
            await send(message)

        try:
            await self.app(scope, receive, send_and_stop_the_clock)
        except asyncio.CancelledError:
            if not expired or started:
                raise
            request.uncancel()
            await send_error(send, 504, f"the request was not answered within {self.timeout:g} s", scope["path"],
                             websocket=scope["type"] == "websocket")
        finally:
            timer.cancel()


def replace_bentoml_timeout() -> None:
    """BentoML 1.4 imports its timeout middleware from this module when it builds the worker's app,
    after the service module (which calls this) is imported; the class is pinned with BentoML's version."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = ResponseTimeout
