"""Graceful drain: SIGTERM lets the requests already taken finish while new generations are refused."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from higgs_api.drain import RETRY_AFTER_S, Drain

from audio_checks import check_generation
from server_checks import wait_for_load
from test_live_api import FAST, Session, events_of
from test_openai_api import LONG_SCRIPT

# Long enough to be streaming for seconds on the tiny model: several text chunks, each of many frames.
STREAM = {"model": "tts-1", "input": LONG_SCRIPT, "voice": "en_man", "response_format": "pcm",
          "seed": 3, "temperature": 0.8, "max_new_tokens": 1000}
QUEUED = {"text": "Waiting for the only slot.", "seed": 1, "max_new_tokens": 100}


def test_sigterm_lets_a_running_stream_and_a_queued_request_finish(start_server, tmp_path):
    server = start_server(tmp_path / "data", extra_env={"HIGGS_MAX_BATCH_SIZE": "1"})
    server.wait_until(("healthy",))
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    whole = requests.post(server.url + "/v1/audio/speech", json=STREAM, timeout=300).content

    response = requests.post(server.url + "/v1/audio/speech", json=STREAM, stream=True, timeout=300)
    chunks = response.iter_content(chunk_size=None)
    streamed = [next(chunks)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(requests.post, server.url + "/generate", json=QUEUED, timeout=300)
        wait_for_load(server.url, lambda running, waiting: waiting >= 1, 30, "the second request queued")
        os.kill(server.process.pid, signal.SIGTERM)  # the server process only, as `docker stop` does

        deadline = time.monotonic() + 10
        while requests.get(server.url + "/readyz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "/readyz still answers 200 after SIGTERM"
            time.sleep(0.05)
        refused = requests.post(server.url + "/generate", json={"text": "hello"}, timeout=10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
        assert "shutting down" in refused.json()["detail"]
        refused_openai = requests.post(server.url + "/v1/audio/speech", json=STREAM, timeout=10)
        assert refused_openai.status_code == 503 and "shutting down" in refused_openai.json()["error"]["message"]
        assert server.process.poll() is None, "the server exited while requests were running"

        streamed.extend(chunks)
        assert b"".join(streamed) == whole
        assert queued.result().status_code == 200
        check_generation(queued.result().json(), QUEUED["text"])
    assert server.process.wait(timeout=60) == 0
    assert "draining 2 request(s)" in server.log_path.read_text(errors="replace")


def test_requests_still_running_at_the_drain_timeout_are_cut_off():
    async def scenario() -> tuple[bool, bool]:
        drain = Drain(timeout_s=0.3)
        started = asyncio.Event()

        async def endless_app(scope, receive, send):
            started.set()
            await asyncio.sleep(3600)

        request = asyncio.create_task(drain.track(endless_app, {}, None, None))
        await started.wait()
        shut_down = asyncio.Event()
        await asyncio.wait_for(drain.run(shut_down.set), timeout=5)
        await asyncio.gather(request, return_exceptions=True)
        return request.cancelled(), shut_down.is_set()

    assert asyncio.run(scenario()) == (True, True)


def test_sigterm_lets_live_sessions_finish_and_closes_the_rest_for_a_restart(start_server, tmp_path):
    """Open sessions go on while the server drains: one that ends its input is spoken to the end; one
    still open at the drain timeout is told so and closed with 1012 (service restart), so its client
    reconnects to another replica. New sessions are refused at the handshake."""
    server = start_server(tmp_path / "data", extra_env={"HIGGS_DRAIN_TIMEOUT_S": "6", "HIGGS_LIVE_IDLE_S": "60"})
    server.wait_until(("healthy",))
    finishing, staying = Session(server, {**FAST}), Session(server, {**FAST})
    staying.say("One sentence before the restart.")
    staying.until("segment.done")
    os.kill(server.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while requests.get(server.url + "/readyz", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "/readyz still answers 200 after SIGTERM"
        time.sleep(0.05)
    with pytest.raises(InvalidStatus) as refused:
        Session(server)
    assert refused.value.response.status_code == 503

    finishing.say("Spoken while the server drains.")
    finishing.send({"type": "input.done"})
    messages = finishing.until("session.done")
    assert [event["text"] for event in events_of(messages, "segment.start")] == ["Spoken while the server drains."]
    with pytest.raises(ConnectionClosed) as closed:
        finishing.next_event()
    assert closed.value.rcvd.code == 1000

    with pytest.raises(ConnectionClosed) as closed:
        while True:
            staying.next_event(timeout=30)
    assert events_of(staying.events, "error")[-1]["code"] == "server_shutting_down"
    assert closed.value.rcvd.code == 1012
    assert server.process.wait(timeout=60) == 0
