"""The traffic timeout that replaces BentoML's: 504 for a request that does not start its response in
time, no limit once it has, and nothing of a finished request left on the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref

from higgs_api.response_timeout import ResponseTimeout

# What an outer layer (BentoML's tracing) keeps in the context a request runs in.
REQUEST_CONTEXT = contextvars.ContextVar("request_context")


class Marker:
    pass


def http_scope(path: str) -> dict:
    return {"type": "http", "path": path, "method": "POST", "headers": []}


async def call(middleware, path: str) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(http_scope(path), receive, send)
    return sent


async def slow_start(scope, receive, send):
    await asyncio.sleep(3600)


async def quick_start_slow_end(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.3)  # three times the timeout
    await send({"type": "http.response.body", "body": b"done"})


def test_a_request_that_does_not_start_in_time_gets_504_in_its_route_shape():
    async def both():
        return await call(ResponseTimeout(slow_start, 0.1), "/generate"), \
            await call(ResponseTimeout(slow_start, 0.1), "/v1/audio/speech")

    rest, openai = asyncio.run(both())
    assert rest[0]["status"] == openai[0]["status"] == 504
    assert json.loads(rest[1]["body"])["detail"] == "the request was not answered within 0.1 s"
    assert json.loads(openai[1]["body"])["error"]["type"] == "server_error"


def test_once_the_response_has_started_it_takes_as_long_as_it_needs():
    sent = asyncio.run(call(ResponseTimeout(quick_start_slow_end, 0.1), "/v1/audio/speech"))
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"done"


def test_finished_requests_leave_nothing_on_the_event_loop():
    """Each request's context (with what outer layers keep in it) is freed when it ends, however long
    the timeout."""
    async def quick(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ResponseTimeout(quick, 3600)

    async def requests() -> list[weakref.ref]:
        markers = []

        async def one():
            marker = Marker()
            REQUEST_CONTEXT.set(marker)
            markers.append(weakref.ref(marker))
            await call(middleware, "/generate")

        for _ in range(20):
            await asyncio.create_task(one())
        await asyncio.sleep(0)  # the last task's own callbacks
        gc.collect()
        return [marker for marker in markers if marker() is not None]

    assert asyncio.run(requests()) == []
