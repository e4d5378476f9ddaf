"""The OpenAI-compatible speech route, driven by the official `openai` SDK, plus voice management,
metrics and request ids, against a real server process."""

from __future__ import annotations

import base64
import io
import json
import time

import av
import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from audio_checks import parse_wav as parse_any_wav
from paths import VOICE_PROMPTS_DIR
from server_checks import metric_value

FAST = {"seed": 5, "max_new_tokens": 60, "temperature": 0.8}
LONG_SCRIPT = " ".join(
    f"Paragraph {i} of a long script keeps the same voice from start to end, sentence after sentence, "
    f"while the listener hears it stream." for i in range(8))


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="not-needed-here", max_retries=0, timeout=300)


def decode_any(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decodes audio bytes with a reader independent of our encoder; returns samples and rate."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 24000
    if fmt in ("wav", "flac", "mp3"):
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert samples.ndim == 1
        return samples, rate
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == {"opus": "opus", "aac": "aac"}[fmt]
        assert stream.codec_context.channels == 1
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate([frame.reshape(-1) for frame in frames])
    return samples, rate


def parse_wav(data: bytes) -> np.ndarray:
    """The speech route streams WAV with the unknown-length header, unless a tempo change made it whole."""
    return parse_any_wav(data, streamed=data[4:8] == b"\xff" * 4)


def speech_bytes(client, **fields) -> bytes:
    extra = {key: fields.pop(key) for key in ("seed", "max_new_tokens", "temperature", "top_k", "top_p") if key in fields}
    return client.audio.speech.create(model=fields.pop("model", "tts-1"), extra_body=extra, **fields).content


@pytest.fixture(scope="module")
def reference_wav(client) -> np.ndarray:
    return parse_wav(speech_bytes(client, voice="en_woman", input="Formats all say this.", response_format="wav", **FAST))


@pytest.mark.parametrize("fmt,tolerance_s", [("wav", 0), ("pcm", 0), ("flac", 0), ("mp3", 0.08), ("opus", 0.03),
                                              ("aac", 0.1)])
def test_every_format_decodes_to_the_same_audio_length(client, reference_wav, fmt, tolerance_s):
    data = speech_bytes(client, voice="en_woman", input="Formats all say this.", response_format=fmt, **FAST)
    samples, rate = decode_any(data, fmt)
    assert rate in (24000, 48000)
    expected = len(reference_wav) / 24000
    assert abs(len(samples) / rate - expected) <= tolerance_s + 1e-9, (fmt, len(samples) / rate, expected)


def test_default_format_is_mp3_and_models_are_accepted(client):
    for model in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "higgs-audio-v2"):
        response = client.audio.speech.with_raw_response.create(model=model, voice="belinda", input="Default format.",
                                                                extra_body=FAST)
        assert response.headers["content-type"].startswith("audio/mpeg")
        decode_any(response.content, "mp3")


def test_voice_id_object_form_and_no_voice(client):
    with_id = speech_bytes(client, voice={"id": "chadwick"}, input="Object voice.", response_format="wav", **FAST)
    with_name = speech_bytes(client, voice="chadwick", input="Object voice.", response_format="wav", **FAST)
    assert with_id == with_name
    parse_wav(client.audio.speech.create(model="tts-1", voice=None, input="Model's choice.", response_format="wav",
                                         extra_body=FAST).content)


def test_speed_changes_tempo(client):
    normal = parse_wav(speech_bytes(client, voice="en_man", input="Tempo test.", response_format="wav", **FAST))
    fast = parse_wav(speech_bytes(client, voice="en_man", input="Tempo test.", response_format="wav", speed=2.0, **FAST))
    slow = parse_wav(speech_bytes(client, voice="en_man", input="Tempo test.", response_format="wav", speed=0.5, **FAST))
    assert abs(len(fast) / len(normal) - 0.5) < 0.1
    assert abs(len(slow) / len(normal) - 2.0) < 0.2


def test_instructions_become_the_scene(client):
    plain = speech_bytes(client, voice="en_man", input="Scene test.", response_format="wav", **FAST)
    with_scene = speech_bytes(client, voice="en_man", input="Scene test.", response_format="wav",
                              instructions="Whispered in a cathedral.", **FAST)
    parse_wav(with_scene)
    assert with_scene != plain


def test_one_off_cloning_with_ref_audio(client):
    clip = (VOICE_PROMPTS_DIR / "en_woman.wav").read_bytes()
    data = client.audio.speech.create(
        model="tts-1", voice=None, input="Cloned once.", response_format="wav",
        extra_body={**FAST, "ref_audio": base64.b64encode(clip).decode(),
                    "ref_text": "The device would work during the day as well."}).content
    parse_wav(data)


@pytest.mark.parametrize("fields,words", [
    ({"voice": "nobody"}, "'nobody'"),
    ({"model": "whisper-1"}, "whisper-1"),
    ({"response_format": "ogg"}, "response_format"),
    ({"speed": 5.0}, "speed"),
    ({"speed": 0.1}, "speed"),
    ({"input": "   "}, "empty"),
    ({"voice": "belinda", "extra_body": {"ref_audio": "UklGRg=="}}, "either voice or ref_audio"),
    ({"extra_body": {"temperature": 3}}, "temperature"),
    ({"extra_body": {"unknown_field": 1}}, "unknown_field"),
])
def test_errors_reach_the_sdk_with_their_message(client, fields, words):
    request = {"model": "tts-1", "voice": "belinda", "input": "Error test.", **fields}
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.speech.create(**request)
    assert words in raised.value.message
    assert raised.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("speed", [1.0, 1.5])
def test_byte_stream_starts_long_before_it_ends(client, speed):
    started = time.monotonic()
    first_at, data = None, bytearray()
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="en_man", input=LONG_SCRIPT, response_format="pcm", speed=speed,
            extra_body={"seed": 1, "max_new_tokens": 120}) as response:
        for chunk in response.iter_bytes():
            if first_at is None and chunk:
                first_at = time.monotonic() - started
            data += chunk
    total = time.monotonic() - started
    assert len(data) % 2 == 0 and len(data) > 24000 * 2
    assert first_at < 0.35 * total, (first_at, total)


def test_streamed_wav_has_one_header(client):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="en_man", input="One header only, please.", response_format="wav",
            extra_body=FAST) as response:
        data = b"".join(response.iter_bytes())
    assert data.count(b"WAVEfmt ") == 1
    parse_any_wav(data, streamed=True)


def test_sse_event_sequence(client):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="en_man", input=LONG_SCRIPT[:400], response_format="pcm", stream_format="sse",
            extra_body={"seed": 2, "max_new_tokens": 80}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    kinds = [event["type"] for event in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) >= 3
    audio = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert 0 < usage["prefill_tokens"] <= usage["input_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert len(audio) > 0 and len(audio) % 2 == 0
    assert events[-1]["finish_reason"] in ("stop", "length", "guard")


def test_seed_routes_take_a_response_format(base_url):
    body = {"text": "Seed route in mp3.", "response_format": "mp3", **FAST}
    result = requests.post(base_url + "/generate", json=body, timeout=120).json()
    samples, rate = decode_any(base64.b64decode(result["audio_base64"]), "mp3")
    assert rate == 24000 and abs(len(samples) / rate - result["duration"]) < 0.08


# --- voice management ------------------------------------------------------------------------------

def test_voice_lifecycle(base_url, client):
    clip = (VOICE_PROMPTS_DIR / "mabel.wav").read_bytes()
    created = requests.post(base_url + "/upload-voice", files={"file": ("lifecycle.wav", clip)},
                            data={"description": "to be deleted", "transcript": "You do talk an awful lot"}, timeout=60)
    assert created.status_code == 200, created.text
    info = requests.get(base_url + "/voices/lifecycle", timeout=10).json()
    assert info["description"] == "to be deleted" and info["transcript"] == "You do talk an awful lot"
    assert info["kind"] == "uploaded" and abs(info["duration"] - 11.0) < 0.1 and info["created"]
    audio = requests.get(base_url + "/voices/lifecycle/audio", timeout=10)
    assert audio.headers["content-type"] == "audio/wav"
    assert abs(len(parse_any_wav(audio.content)) / 24000 - info["duration"]) < 0.01
    parse_wav(speech_bytes(client, voice="lifecycle", input="Before deletion.", response_format="wav", **FAST))

    assert requests.delete(base_url + "/voices/lifecycle", timeout=10).status_code == 204
    assert "lifecycle" not in {v["name"] for v in requests.get(base_url + "/voices", timeout=10).json()}
    assert requests.get(base_url + "/voices/lifecycle", timeout=10).status_code == 404
    assert requests.delete(base_url + "/voices/lifecycle", timeout=10).status_code == 404
    with pytest.raises(openai.BadRequestError, match="lifecycle"):
        client.audio.speech.create(model="tts-1", voice="lifecycle", input="After deletion.")


def test_presets_cannot_be_deleted(base_url):
    response = requests.delete(base_url + "/voices/belinda", timeout=10)
    assert response.status_code == 403 and "preset" in response.json()["detail"]
    assert requests.get(base_url + "/voices/belinda", timeout=10).json()["kind"] == "preset"


# --- operations ------------------------------------------------------------------------------------

def test_metrics_are_exposed_and_move(base_url, client):
    before = requests.get(base_url + "/metrics", timeout=10).text
    speech_bytes(client, voice="en_man", input="Counting metrics.", response_format="wav", **FAST)
    after = requests.get(base_url + "/metrics", timeout=10).text
    for name in ("higgs_queue_depth", "higgs_running_batch_size", "higgs_realtime_factor_bucket",
                 "higgs_kv_cache_blocks_used", "higgs_kv_cache_blocks_total", "higgs_prefill_deferred_steps"):
        assert name in after
    assert metric_value(after, "higgs_kv_cache_blocks_total") > 0
    assert metric_value(after, "higgs_audio_seconds_generated_total") > metric_value(before, "higgs_audio_seconds_generated_total")
    assert metric_value(after, "higgs_time_to_first_audio_seconds_count") > metric_value(before, "higgs_time_to_first_audio_seconds_count")
    assert 'higgs_requests_finished_total{finish_reason=' in after
    assert "bentoml_" in after  # BentoML's own metrics stay


def test_request_ids_are_echoed_or_created(base_url):
    echoed = requests.get(base_url + "/health", headers={"X-Request-ID": "trace-123"}, timeout=10)
    assert echoed.headers["x-request-id"] == "trace-123"
    created = requests.post(base_url + "/generate", json={"text": ""}, timeout=10)
    assert created.status_code == 400 and len(created.headers["x-request-id"]) >= 16


def test_api_keys(start_server, tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# one key per line\nfile-key\n")
    secured = start_server(tmp_path / "data", extra_env={"HIGGS_API_KEYS": "env-key", "HIGGS_API_KEYS_FILE": str(keys_file)})
    secured.wait_until(("healthy",))
    for path in ("/health", "/livez", "/readyz"):
        assert requests.get(secured.url + path, timeout=10).status_code == 200
    missing = requests.post(secured.url + "/generate", json={"text": "hi"}, timeout=10)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
    wrong = requests.get(secured.url + "/voices", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid API key"}
    for key in ("env-key", "file-key"):
        ok = requests.get(secured.url + "/voices", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200
    bad_client = openai.OpenAI(base_url=secured.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        bad_client.audio.speech.create(model="tts-1", voice="belinda", input="Locked.")
    good_client = openai.OpenAI(base_url=secured.url + "/v1", api_key="env-key", max_retries=0, timeout=120)
    parse_wav(good_client.audio.speech.create(model="tts-1", voice="belinda", input="Unlocked.", response_format="wav",
                                              extra_body=FAST).content)
    secured.stop()


def running_requests(base_url: str) -> float:
    return metric_value(requests.get(base_url + "/metrics", timeout=10).text, "higgs_running_batch_size")


def test_a_client_that_disconnects_frees_its_slot(base_url):
    """A streaming client that goes away mid-stream: the engine stops its request within a step and
    starts none of its remaining text chunks."""
    body = {"model": "tts-1", "input": LONG_SCRIPT, "voice": "en_man", "response_format": "pcm",
            "seed": 3, "max_new_tokens": 1000, "temperature": 0.8}
    response = requests.post(base_url + "/v1/audio/speech", json=body, stream=True, timeout=120)
    chunks = response.iter_content(chunk_size=None)
    deadline = time.monotonic() + 10
    while running_requests(base_url) < 1:
        next(chunks)
        assert time.monotonic() < deadline, "the request never showed as running"
    response.close()  # the client hangs up
    deadline = time.monotonic() + 10
    while running_requests(base_url) > 0:
        assert time.monotonic() < deadline, "the abandoned request is still running"
        time.sleep(0.1)
    time.sleep(1.0)
    assert running_requests(base_url) == 0
    assert metric_value(requests.get(base_url + "/metrics", timeout=10).text, "higgs_queue_depth") == 0
    assert requests.get(base_url + "/health", timeout=10).json()["status"] == "healthy"
