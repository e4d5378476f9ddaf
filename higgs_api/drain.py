"""Graceful drain on SIGTERM: the worker stops taking new generations (503 with `Retry-After`, and
`/readyz` fails so load balancers move on), lets the requests it holds finish, running and queued,
streams included, for up to a drain timeout, then hands over to uvicorn's own shutdown.

uvicorn closes its listening socket the moment it sees SIGTERM, so clients that a load balancer still
sends here would meet refused connections; the drain runs first, with the socket still open.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from .middleware import send_error

log = logging.getLogger(__name__)

# Long enough for a load balancer to take this replica out of rotation, short enough to retry soon.
RETRY_AFTER_S = 5
POLL_S = 0.1


class Drain:
    """Counts the requests in flight and, once draining, waits for them before shutting down."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.draining = False
        self._requests: set[asyncio.Task] = set()
        self._drainer: asyncio.Task | None = None

    def install(self) -> None:
        """Takes SIGTERM over from uvicorn (whose handler must already be in place, as it is once the
        service starts); the drain calls uvicorn's handler when it is done. Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        then = signal.getsignal(signal.SIGTERM)
        if not callable(then):  # no server loop of uvicorn's to hand over to
            return

        def on_sigterm(signum, frame) -> None:
            if not self.draining:
                self.draining = True
                loop.call_soon_threadsafe(self._start, lambda: then(signum, frame))

        signal.signal(signal.SIGTERM, on_sigterm)

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def _start(self, shut_down: Callable[[], None]) -> None:
        self._drainer = asyncio.get_running_loop().create_task(self.run(shut_down))  # kept: tasks are weakly held

    async def run(self, shut_down: Callable[[], None]) -> None:
        """Waits for the requests in flight, up to the timeout, cancels any left, then calls `shut_down`."""
        log.info("SIGTERM: draining %d request(s) for up to %.0f s", self.in_flight, self.timeout_s)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while self._requests and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(POLL_S)
        if self._requests:
            log.warning("drain timeout: cancelling %d request(s) still running", self.in_flight)
            for task in self._requests:
                task.cancel()
        shut_down()

    async def track(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        self._requests.add(task)
        try:
            await app(scope, receive, send)
        finally:
            self._requests.discard(task)


class DrainGate:
    """While draining, refuses new requests (and live sessions) on `refused_paths` with 503; every other
    request (probes aside) and every live session is tracked, so the drain waits for it."""

    def __init__(self, app: ASGIApp, drain: Drain, refused_paths: frozenset[str], untracked_paths: frozenset[str]):
        self.app, self.drain = app, drain
        self.refused_paths, self.untracked_paths = refused_paths, untracked_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or path in self.untracked_paths:
            return await self.app(scope, receive, send)
        if self.drain.draining and path in self.refused_paths:
            return await send_error(send, 503, "this server is shutting down and takes no new generations; "
                                    f"retry in {RETRY_AFTER_S} s (another replica will answer)", path,
                                    [(b"retry-after", str(RETRY_AFTER_S).encode())], websocket=scope["type"] == "websocket")
        await self.drain.track(self.app, scope, receive, send)
