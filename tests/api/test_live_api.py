"""The live route against real servers, with a real WebSocket client: text streamed in word by word,
segments spoken in order, flush, barge-in, bad messages, keys, limits, a client that leaves mid-segment,
and sessions at once."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from paths import VOICE_PROMPTS_DIR
from server_checks import engine_load, metric_value

import requests

FAST = {"seed": 3, "max_new_tokens": 30}
# Greedy with the runaway guard off keeps tiny-random generating to max_new_tokens: a segment that lasts.
LONG = {"seed": 3, "max_new_tokens": 1500, "temperature": 0}
KEY = "live-key"


def url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


class Session:
    """A client of the live route that keeps every event and the audio between them."""

    def __init__(self, server, config: dict | None = None, headers: dict | None = None):
        self.ws = connect(url(server), additional_headers=headers or {}, open_timeout=30, max_size=2 ** 24)
        self.events: list = []
        if config is not None:
            self.send({"type": "session.config", **config})
            assert self.next_event()["type"] == "session.created"

    def send(self, message) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def next_event(self, timeout: float = 60):
        """The next message: a dict for an event, bytes for audio."""
        message = self.ws.recv(timeout=timeout)
        event = message if isinstance(message, bytes) else json.loads(message)
        self.events.append(event)
        return event

    def until(self, kind: str, timeout: float = 120) -> list:
        """Messages up to and including the first event of `kind`."""
        start, deadline = len(self.events), time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.1, deadline - time.monotonic()))
            if isinstance(event, dict) and event["type"] == kind:
                return self.events[start:]

    def say(self, text: str) -> None:
        for word in text.split(" "):
            self.send({"type": "input.text", "text": word + " "})

    def close(self) -> None:
        self.ws.close()


def events_of(messages: list, kind: str) -> list[dict]:
    return [m for m in messages if isinstance(m, dict) and m["type"] == kind]


def audio_seconds(messages: list) -> float:
    return sum(len(m) for m in messages if isinstance(m, bytes)) / 2 / 24000


# --- the protocol ----------------------------------------------------------------------------------

def test_sentences_are_spoken_in_order_as_they_complete(server):
    session = Session(server, {"voice": "en_man", **FAST})
    session.say("Hello there, welcome. This is the second sentence! And")
    first = session.until("segment.done")
    assert events_of(first, "segment.start") == [{"type": "segment.start", "segment": 0, "text": "Hello there, welcome."}]
    session.say("a third, unfinished")
    session.send({"type": "input.done"})
    rest = session.until("session.done")
    done = events_of(first + rest, "segment.done")
    assert [event["segment"] for event in done] == [0, 1, 2]
    assert [event["text"] for event in events_of(rest, "segment.start")] == ["This is the second sentence!",
                                                                             "And a third, unfinished."]
    # Each segment's audio lies between its start and done events and adds up to its audio_seconds.
    messages = first + rest
    for event in done:
        start = messages.index({"type": "segment.start", "segment": event["segment"],
                                "text": events_of(messages, "segment.start")[event["segment"]]["text"]})
        end = messages.index(event)
        assert audio_seconds(messages[start:end]) == pytest.approx(event["audio_seconds"], abs=1e-3)
        assert event["finish_reason"] in ("stop", "length", "guard")
        assert set(event["usage"]) == {"prompt_tokens", "prefill_tokens", "completion_tokens"}
    # Later segments continue the context: they compute only their own turn.
    assert all(event["usage"]["prefill_tokens"] < event["usage"]["prompt_tokens"] / 2 for event in done[1:])
    session_done = events_of(rest, "session.done")[0]
    assert session_done["usage"]["prompt_tokens"] == sum(event["usage"]["prompt_tokens"] for event in done)
    assert session_done["audio_seconds"] == pytest.approx(audio_seconds(messages), abs=1e-2)
    with pytest.raises(ConnectionClosed) as closed:
        session.next_event(10)
    assert closed.value.rcvd.code == 1000


def test_flush_speaks_what_is_buffered(server):
    session = Session(server, {**FAST})
    session.say("no end in sight yet")
    session.send({"type": "input.flush"})
    messages = session.until("segment.done")
    assert events_of(messages, "segment.start")[0]["text"] == "no end in sight yet."  # normalised
    assert audio_seconds(messages) > 0
    session.close()


def test_a_cloned_voice_from_a_clip(server):
    clip = base64.b64encode((VOICE_PROMPTS_DIR / "belinda.wav").read_bytes()).decode()
    session = Session(server, {"ref_audio": clip, "ref_text": "A transcript.", **FAST})
    session.say("Cloned for the whole session. Still the same voice. ")
    session.send({"type": "input.done"})
    done = events_of(session.until("session.done"), "segment.done")
    assert len(done) == 2 and done[1]["usage"]["prefill_tokens"] < 80
    session.close()


def test_barge_in_stops_the_segment_and_the_session_goes_on(server):
    session = Session(server, {"voice": "alloy", **LONG})
    session.say("This sentence goes on for a long while. Queued behind it. ")
    while not isinstance(session.next_event(), bytes):  # the first segment is being heard
        pass
    session.send({"type": "response.cancel"})
    stopped = session.until("response.cancelled")
    done = events_of(stopped, "segment.done")
    assert [(event["segment"], event["finish_reason"]) for event in done] == [(0, "cancelled")]
    assert events_of(stopped, "segment.start") == []  # the queued sentence was dropped
    # Nothing of the stopped segment after response.cancelled: the next message starts a new segment.
    session.send({"type": "input.text", "text": "After the barge-in. "})
    session.send({"type": "input.done"})
    after = session.until("session.done")
    assert isinstance(after[0], dict) and after[0] == {"type": "segment.start", "segment": 1, "text": "After the barge-in."}
    assert events_of(after, "segment.done")[0]["finish_reason"] in ("length", "stop", "guard")
    session.close()


@pytest.mark.parametrize("message,code,param", [
    ("not json", "invalid_json", None),
    (b"\x00\x01", "invalid_message", None),
    ({"type": "input.sing"}, "unknown_type", "type"),
    ({"type": "input.text", "text": 5}, "invalid_field", "text"),
    ({"type": "input.text", "txt": "typo"}, "invalid_field", "txt"),
    ({"type": "session.config"}, "already_configured", None),
])
def test_a_bad_message_is_answered_and_the_session_goes_on(server, message, code, param):
    session = Session(server, {**FAST})
    session.send(message)
    error = session.next_event()
    assert error["type"] == "error" and error["code"] == code and error["param"] == param and error["message"]
    session.send({"type": "input.text", "text": "Still here. "})
    session.send({"type": "input.done"})
    assert events_of(session.until("session.done"), "segment.done")
    session.close()


def test_a_bad_config_is_answered_and_another_may_follow(server):
    session = Session(server)
    session.send({"type": "input.text", "text": "Too early. "})
    assert session.next_event()["code"] == "not_configured"
    for config, code, param in (({"voice": "nobody"}, "invalid_config", "voice"),
                                ({"temperature": 9}, "invalid_field", "temperature"),
                                ({"voice": "en_man", "voice_description": "deep"}, "invalid_config", "voice"),
                                ({"ref_audio": "bm90IGF1ZGlv"}, "invalid_config", "ref_audio")):
        session.send({"type": "session.config", **config})
        error = session.next_event()
        assert (error["type"], error["code"], error["param"]) == ("error", code, param), error
    session.send({"type": "session.config", "voice": "shimmer", **FAST})
    assert session.next_event()["type"] == "session.created"
    session.close()


def test_a_client_that_leaves_mid_segment_leaves_the_engine_idle(server):
    session = Session(server, {**LONG})
    session.say("A sentence that would go on and on. ")
    while not isinstance(session.next_event(), bytes):
        pass
    session.ws.close()
    deadline = time.monotonic() + 10
    while engine_load(server.url)[0] != 0:
        assert time.monotonic() < deadline, "the segment kept generating after the client left"
        time.sleep(0.05)
    kept = metric_value(requests.get(server.url + "/metrics", timeout=10).text, "higgs_kept_contexts")
    assert kept == 0


def test_four_sessions_at_once(server):
    def one(number: int) -> list[str]:
        session = Session(server, {"voice": ["en_man", "belinda", "alloy", "chadwick"][number], **FAST})
        session.say(f"Session {number} speaks first. Then session {number} speaks again.")
        session.send({"type": "input.done"})
        messages = session.until("session.done", timeout=180)
        session.close()
        assert audio_seconds(messages) > 0
        return [event["text"] for event in events_of(messages, "segment.start")]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, range(4)))
    assert texts == [[f"Session {n} speaks first.", f"Then session {n} speaks again."] for n in range(4)]


# --- keys and limits --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(start_server):
    server = start_server(extra_env={"HIGGS_API_KEYS": KEY, "HIGGS_LIVE_SESSIONS": "2", "HIGGS_LIVE_IDLE_S": "2",
                                     "HIGGS_LIVE_BUFFERED_CHARS": "200", "HIGGS_LIVE_MESSAGE_BYTES": "4096"})
    server.wait_until(("healthy",))
    yield server
    server.stop()


def test_keys_on_the_handshake_or_in_the_config(guarded):
    with pytest.raises(InvalidStatus) as refused:
        Session(guarded, headers={"Authorization": "Bearer wrong"})
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["message"] == "invalid API key"
    Session(guarded, {**FAST}, headers={"Authorization": f"Bearer {KEY}"}).close()
    Session(guarded, {"api_key": KEY, **FAST}).close()  # a browser's way
    without = Session(guarded)
    without.send({"type": "session.config", "api_key": "wrong", **FAST})
    assert without.next_event()["code"] == "invalid_api_key"
    with pytest.raises(ConnectionClosed) as closed:
        without.next_event()
    assert closed.value.rcvd.code == 1008


def test_limits(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    first, second = Session(guarded, {**FAST}, auth), Session(guarded, {**FAST}, auth)
    with pytest.raises(InvalidStatus) as refused:
        Session(guarded, headers=auth)
    assert refused.value.response.status_code == 429
    first.send({"type": "input.text", "text": "x" * 201})
    assert (first.next_event()["code"], first.events[-1]["param"]) == ("buffer_full", "text")
    first.send(json.dumps({"type": "input.text", "text": "y" * 5000}))
    assert first.next_event()["code"] == "message_too_large"
    first.close()
    # Idle: nothing sent and nothing to say for HIGGS_LIVE_IDLE_S closes the session.
    assert second.next_event(10)["code"] == "idle"
    with pytest.raises(ConnectionClosed) as closed:
        second.next_event(10)
    assert closed.value.rcvd.code == 1008
