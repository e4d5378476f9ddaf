"""Hostile input, second round, against a real server with API keys: audio at odd sample rates, paths
that would grow the metrics, any bytes in `Authorization`, voice audio racing its delete, bodies of
the wrong type, ambiguous framing, clients that leave mid-body or trickle it, pages of other sites
opening live sessions, long texts that cannot fit, tiny `max_new_tokens`. Each answer is a clear 4xx;
the worker keeps its pid, bounded memory, a log without tracebacks, and exits cleanly on SIGTERM."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import threading
import time

import numpy as np
import psutil
import pytest
import requests
import soundfile as sf
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from audio_checks import parse_wav
from paths import VOICE_PROMPTS_DIR
from server_checks import engine_load, metric_value, peak_rss_bytes, worker_process

KEY = "second-round-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MiB = 1024 * 1024
BODY_TIMEOUT_S = 2
MAX_SEQ_LEN = 1024
CHUNK_CHARS = 80
# Room for peaks of normal work; gigabytes mean an input went unbounded.
RSS_MARGIN = 400 * MiB


@pytest.fixture(scope="module")
def keyed(start_server):
    server = start_server(extra_env={"HIGGS_API_KEYS": KEY, "HIGGS_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                                     "HIGGS_MAX_SEQ_LEN": str(MAX_SEQ_LEN),
                                     "HIGGS_LONG_FORM_CHUNK_CHARS": str(CHUNK_CHARS)})
    server.wait_until(("healthy",))
    post(server, "/generate", {"text": "Warm up.", "max_new_tokens": 8})
    server.worker = worker_process(server.process.pid)
    server.rss_at_start = peak_rss_bytes(server.worker)
    yield server
    server.stop()


def post(server, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=AUTH, timeout=120, **kwargs)


def detail_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    return body["detail"] if "detail" in body else body["error"]["message"]


def raw_exchange(server, data: bytes, send_more=None, timeout: float = 10) -> tuple[bytes, bool]:
    """Sends `data` on a fresh connection (then `send_more(sock)`, if given) and reads until the server
    closes it or `timeout` passes: (what came back, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        if send_more:
            send_more(sock)
        received, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                return received, True
            received += chunk
        return received, False


def wav_at(rate: int, seconds: float) -> bytes:
    """A real voice clip, its samples declared at `rate`."""
    samples, _ = sf.read(VOICE_PROMPTS_DIR / "en_man.wav", dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, samples[: int(rate * seconds)], rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def metrics_text(server) -> str:
    return requests.get(server.url + "/metrics", headers=AUTH, timeout=30).text


# --- audio whose rate has awkward factors ---------------------------------------------------------------

@pytest.mark.parametrize("rate", [16001, 16006, 22051, 44099, 47999])
def test_clips_at_odd_sample_rates_are_used_in_bounded_memory(keyed, rate):
    clip = wav_at(rate, 0.6)
    assert len(clip) < 64 * 1024
    upload = requests.post(keyed.url + "/upload-voice", files={"file": ("odd.wav", clip)},
                           data={"name": f"odd-{rate}"}, headers=AUTH, timeout=120)
    assert upload.status_code == 200, upload.text
    assert abs(upload.json()["duration"] - 0.6) < 0.01
    cloned = post(keyed, "/generate/voice-clone", {"text": "Odd rate.", "reference_audio": base64.b64encode(clip).decode(),
                                                   "max_new_tokens": 10, "seed": 1})
    assert cloned.status_code == 200, cloned.text
    assert peak_rss_bytes(keyed.worker) < keyed.rss_at_start + RSS_MARGIN


# --- metrics: labelled by route, never by raw path ---------------------------------------------------------

def _unique_requests(server, start: int, count: int) -> None:
    for i in range(start, start + count):
        token = f"u{i:05d}" + "p" * 2000
        for method, path, headers in [("GET", f"/{token}", {}), ("POST", f"/{token}", {}), ("DELETE", f"/voices/{token}", {}),
                                      ("GET", f"/voices/{token}/audio", {}), ("GET", f"/v1/models/{token}", {}),
                                      ("GET", f"/voices/{token}", AUTH), ("GET", f"/{token}", AUTH)]:
            response = requests.request(method, server.url + path, headers=headers, timeout=30)
            assert response.status_code in (401, 404, 405), (method, path[:40], response.status_code)


def test_unique_paths_do_not_grow_the_metrics(keyed):
    _unique_requests(keyed, 0, 5)  # every series these requests can make exists from here on
    before = metrics_text(keyed)
    _unique_requests(keyed, 5, 40)
    after = metrics_text(keyed)
    assert "u000" not in after
    assert len(after) - len(before) < 1024, (len(before), len(after))
    assert 'endpoint="/voices/{name}"' in after and 'endpoint="unmatched"' in after


# --- Authorization: any bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "Bearer é".encode(), b"Bearer \xff\xfe\x80", b"\xc3\xa9", f"Bearer {KEY}\xe9".encode("latin-1"),
    b"Bearer " + b"k" * 6000, b"bearer", b"Basic " + KEY.encode(), f"Bearer  {KEY}x".encode(),
])
def test_any_authorization_bytes_are_answered_401(keyed, value):
    request = b"GET /voices HTTP/1.1\r\nHost: x\r\nAuthorization: " + value + b"\r\nConnection: close\r\n\r\n"
    received, closed = raw_exchange(keyed, request)
    assert received.startswith(b"HTTP/1.1 401"), received[:200]
    assert closed


def test_the_key_still_works_beside_hostile_headers(keyed):
    response = requests.get(keyed.url + "/voices", headers={**AUTH, "X-Junk": "\xe9\xff"}, timeout=30)
    assert response.status_code == 200


# --- voice audio racing its delete ---------------------------------------------------------------------------

def test_voice_audio_racing_delete_is_whole_or_404(keyed):
    clip, name = wav_at(24000, 2.0), "racer"
    answers: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for path in (f"/voices/{name}/audio", f"/voices/{name}"):
                response = requests.get(keyed.url + path, headers=AUTH, timeout=30)
                declared = int(response.headers.get("content-length", -1))
                answers.append((response.status_code, declared, len(response.content)))
                if response.status_code == 200 and path.endswith("/audio"):
                    assert len(parse_wav(response.content)) > 0

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(6):
            upload = requests.post(keyed.url + "/upload-voice", files={"file": ("r.wav", clip)}, data={"name": name},
                                   headers=AUTH, timeout=120)
            assert upload.status_code == 200, upload.text
            time.sleep(0.2)
            assert requests.delete(f"{keyed.url}/voices/{name}", headers=AUTH, timeout=30).status_code == 204
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert {status for status, _, _ in answers} <= {200, 404}, answers
    assert all(declared == length for _, declared, length in answers), answers
    assert any(status == 200 for status, _, _ in answers) and any(status == 404 for status, _, _ in answers)


# --- bodies: type, framing, clients that leave or trickle ---------------------------------------------------

@pytest.mark.parametrize("path", ["/generate", "/v1/audio/speech"])
@pytest.mark.parametrize("content_type,body", [
    ("text/plain", b'{"text": "hi", "input": "hi"}'),
    ("application/x-www-form-urlencoded", b"text=123&input=123"),
    ("multipart/form-data", b"--x\r\n"),
    ("multipart/form-data; boundary=zz", b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--x--\r\n'),
    ("multipart/form-data; boundary=b", b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
                                                 for i in range(2000)) + b"--b--\r\n"),
    (None, b'{"text": "hi", "input": "hi"}'),
])
def test_json_routes_refuse_other_bodies_with_415(keyed, path, content_type, body):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = requests.post(keyed.url + path, data=body, headers=headers, timeout=30)
    assert "Content-Type: application/json" in detail_of(response, 415)


def test_json_with_a_charset_is_json(keyed):
    response = requests.post(keyed.url + "/generate", data=json.dumps({"text": "Hi.", "max_new_tokens": 8}),
                             headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}, timeout=60)
    assert response.status_code == 200, response.text


def test_an_upload_of_2000_fields_is_refused_as_a_client_error(keyed):
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(2000)) + b"--b--\r\n"
    response = requests.post(keyed.url + "/upload-voice", data=body, timeout=30,
                             headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(keyed):
    smuggled = (b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    received, closed = raw_exchange(keyed, smuggled)
    assert received.startswith(b"HTTP/1.1 400"), received[:300]
    assert b"Transfer-Encoding" in received and received.count(b"HTTP/1.1 ") == 1, received
    assert closed


def _generate_count(text: str, code: int) -> float:
    return metric_value(text, f'bentoml_service_request_total{{endpoint="/generate",http_response_code="{code}"')


def test_a_client_leaving_mid_body_counts_as_499_not_500(keyed):
    before = metrics_text(keyed)
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"text\": ")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", keyed.port)) as sock:
            sock.sendall(head)
            time.sleep(0.3)
    deadline = time.monotonic() + 10
    while _generate_count(metrics_text(keyed), 499) < _generate_count(before, 499) + 3:
        assert time.monotonic() < deadline, "the aborted requests were never counted"
        time.sleep(0.2)
    assert _generate_count(metrics_text(keyed), 500) == _generate_count(before, 500)
    assert "answered 499: the client closed the connection" in keyed.log_path.read_text(errors="replace")


def test_a_trickled_body_is_cut_off_with_408(keyed):
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")

    def trickle(sock: socket.socket) -> None:
        for _ in range(4 * BODY_TIMEOUT_S):
            try:
                sock.sendall(b" ")
            except OSError:
                return
            time.sleep(0.5)

    started = time.monotonic()
    received, closed = raw_exchange(keyed, head, send_more=trickle, timeout=4 * BODY_TIMEOUT_S + 5)
    assert received.startswith(b"HTTP/1.1 408"), received[:300]
    assert b"HIGGS_BODY_TIMEOUT_S" in received and closed
    assert time.monotonic() - started < 4 * BODY_TIMEOUT_S + 2


# --- live sessions opened by pages of other sites ------------------------------------------------------------

def live_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


def test_a_page_of_another_site_cannot_open_a_live_session(keyed):
    with pytest.raises(InvalidStatus) as refused:
        connect(live_url(keyed), origin="http://evil.example", additional_headers=AUTH, open_timeout=30)
    assert refused.value.response.status_code == 403
    assert b"HIGGS_CORS_ORIGINS" in refused.value.response.body


def test_a_page_of_the_server_itself_opens_a_live_session(keyed):
    with connect(live_url(keyed), origin=f"http://127.0.0.1:{keyed.port}", additional_headers=AUTH,
                 open_timeout=30) as websocket:
        websocket.send(json.dumps({"type": "session.config", "voice": "belinda"}))
        assert json.loads(websocket.recv(timeout=30))["type"] == "session.created"


# --- long texts and tiny max_new_tokens -------------------------------------------------------------------------

# With these scenes (about 840 tokens, or 480 beside belinda's clip) the first chunk fits the prompt
# limit; the later ones (320 tokens each: a character of four bytes is four tokens) cannot, whatever
# their context.
SCENE = "The scene is a quiet room. " * 70
SCENE_BESIDE_A_CLIP = "The scene is a quiet room. " * 40
UNFITTING_TEXT = "Fine.\n\n" + "\U00020000" * (2 * CHUNK_CHARS)


@pytest.mark.parametrize("path,body", [
    ("/generate", {"text": UNFITTING_TEXT, "scene_prompt": SCENE}),
    ("/v1/audio/speech", {"input": UNFITTING_TEXT, "instructions": SCENE_BESIDE_A_CLIP, "voice": "belinda",
                          "response_format": "pcm"}),
    ("/v1/audio/speech", {"input": UNFITTING_TEXT, "instructions": SCENE_BESIDE_A_CLIP, "voice": "belinda",
                          "stream_format": "sse"}),
])
def test_a_long_text_whose_later_chunk_cannot_fit_is_refused_before_any_audio(keyed, path, body):
    fitting = post(keyed, path, {**body, "input" if "input" in body else "text": "Fine.", "max_new_tokens": 4})
    assert fitting.status_code == 200, fitting.text[:300]
    response = post(keyed, path, {**body, "max_new_tokens": 10})
    detail = detail_of(response, 400)
    assert "chunk 2 of" in detail and str(MAX_SEQ_LEN) in detail, detail
    assert engine_load(keyed.url) == (0, 0)


@pytest.mark.parametrize("frames", [1, 2, 8, 9])
def test_a_tiny_max_new_tokens_still_gives_audio(keyed, frames):
    response = post(keyed, "/generate", {"text": "Short.", "max_new_tokens": frames, "temperature": 0})
    assert response.status_code == 200, response.text
    samples = parse_wav(base64.b64decode(response.json()["audio_base64"]))
    assert 0 < len(samples) <= frames * 960


# --- afterwards -----------------------------------------------------------------------------------------------------

def test_the_server_came_through_clean_and_exits_on_sigterm(keyed):
    log = keyed.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "[ERROR]" not in log, log[max(0, log.find("Traceback") - 500):][:3000]
    assert worker_process(keyed.process.pid).pid == keyed.worker.pid, "the worker was restarted"
    peak = peak_rss_bytes(keyed.worker)
    print(f"worker peak RSS: {peak / MiB:.0f} MiB (after warm-up: {keyed.rss_at_start / MiB:.0f} MiB)")
    assert peak < keyed.rss_at_start + RSS_MARGIN
    processes = [psutil.Process(keyed.process.pid), *psutil.Process(keyed.process.pid).children(recursive=True)]
    os.killpg(keyed.process.pid, signal.SIGTERM)
    gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"still running 30 s after SIGTERM: {alive}"
    assert keyed.process.wait() == 0
