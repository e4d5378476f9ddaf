"""The REST contract of the seed spec, end to end: a real server process, real HTTP clients, real audio."""

from __future__ import annotations

import base64
import io
import json
import subprocess

import numpy as np
import pytest
import requests
import soundfile as sf

from audio_checks import check_generation, parse_wav
from paths import VOICE_PROMPTS_DIR

PRESETS = ["belinda", "chadwick", "en_man", "en_woman", "mabel", "zh_man_sichuan"]
FAST = {"max_new_tokens": 40}


def post(base_url: str, path: str, body: dict, timeout: float = 120) -> requests.Response:
    return requests.post(base_url + path, json=body, timeout=timeout)


def detail_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"], body
    return body["detail"]


def clip_bytes(name: str, format: str = "WAV", channels: int = 1, seconds: float | None = None) -> bytes:
    samples, rate = sf.read(VOICE_PROMPTS_DIR / f"{name}.wav", dtype="float32")
    if seconds is not None:
        samples = samples[: int(seconds * rate)]
    if channels == 2:
        samples = np.stack([samples, samples * 0.5], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format)
    return buffer.getvalue()


# --- health and voices -------------------------------------------------------------------------

def test_health_reports_the_ready_model(base_url):
    health = requests.get(base_url + "/health", timeout=5).json()
    assert health["status"] == "healthy" and health["model_loaded"] is True
    assert health["device"] == "cpu"
    assert health["decode_graphs"] == {"state": "off", "graphs": 0, "failed_attempts": 0, "error": None}  # CPU
    assert health["voices_available"] >= len(PRESETS)
    assert "noise" in health["note"]


def test_voices_lists_the_presets_with_descriptions(base_url):
    voices = requests.get(base_url + "/voices", timeout=5).json()
    by_name = {voice["name"]: voice for voice in voices}
    assert set(PRESETS) <= set(by_name)
    assert all(set(voice) == {"name", "description"} and voice["description"] for voice in voices
               if voice["name"] in PRESETS)


# --- the seed's own examples, verbatim -----------------------------------------------------------

def test_seed_python_example(base_url, tmp_path):
    response = requests.post(f'{base_url}/generate', json={
        'text': '안녕, 세상아!',
        'temperature': 0.7
    })
    result = response.json()
    with open(tmp_path / 'output.wav', 'wb') as f:
        f.write(base64.b64decode(result['audio_base64']))
    parse_wav((tmp_path / 'output.wav').read_bytes())
    check_generation(result, '안녕, 세상아!')

    response = requests.post(f'{base_url}/generate/voice-clone', json={
        'text': '이것은 복제된 음성이 말하고 있습니다.',
        'reference_voice': 'belinda'
    })
    check_generation(response.json(), '이것은 복제된 음성이 말하고 있습니다.')


def test_seed_request_bodies(base_url):
    generate = {"text": "안녕하세요, 이것은 음성으로 변환할 샘플 텍스트입니다.", "temperature": 0.7, "top_p": 0.95,
                "top_k": 50, "max_new_tokens": 1024, "seed": 42, "scene_prompt": "조용한 방에서 녹음된 오디오입니다."}
    check_generation(post(base_url, "/generate", generate).json(), generate["text"])
    clone = {"text": "이 음성을 복제하여 새로운 말을 하게 하고 싶습니다.", "reference_voice": "belinda", "temperature": 0.3,
             "top_p": 0.95, "max_new_tokens": 1024}
    check_generation(post(base_url, "/generate/voice-clone", clone).json(), clone["text"])
    dialogue = {"text": "[SPEAKER0] 안녕하세요! 오늘 어떻게 지내세요?\n[SPEAKER1] 잘 지내고 있어요, 물어봐 주셔서 감사해요!",
                "reference_voices": ["belinda", "chadwick"], "temperature": 0.7, "max_new_tokens": 2048,
                "scene_prompt": "카페에서의 친근한 대화."}
    check_generation(post(base_url, "/generate/multi-speaker", dialogue).json(), dialogue["text"])


@pytest.mark.parametrize("command", [
    '''curl -X POST "http://localhost:8000/generate" \\
     -H "Content-Type: application/json" \\
     -d '{"text": "안녕, 세상아!", "temperature": 0.7}\'''',
    'curl -X GET "http://localhost:8000/health"',
    'curl -X GET "http://localhost:8000/voices"',
])
def test_seed_curl_examples(server, command):
    command = command.replace("localhost:8000", f"127.0.0.1:{server.port}")
    done = subprocess.run(["bash", "-c", command + " -s -w '\\n%{http_code}'"], capture_output=True, timeout=120,
                          check=True)
    body, status = done.stdout.decode().rsplit("\n", 1)
    assert status == "200"
    data = json.loads(body)
    if "/generate" in command:
        check_generation(data, "안녕, 세상아!")
    elif "/health" in command:
        assert data["status"] == "healthy"
    else:
        assert {voice["name"] for voice in data} >= set(PRESETS)


# --- generation behaviour ------------------------------------------------------------------------

def test_same_seed_same_audio_and_other_seed_other_audio(base_url):
    body = {"text": "Reproducible, please.", "temperature": 0.9, "seed": 7, **FAST}
    first, second = post(base_url, "/generate", body).json(), post(base_url, "/generate", body).json()
    assert first["audio_base64"] == second["audio_base64"]
    other = post(base_url, "/generate", {**body, "seed": 8}).json()
    assert other["audio_base64"] != first["audio_base64"]


def test_temperature_zero_is_greedy(base_url):
    body = {"text": "Greedy decoding.", "temperature": 0, **FAST}
    assert post(base_url, "/generate", body).json()["audio_base64"] == post(base_url, "/generate", body).json()["audio_base64"]


def test_max_new_tokens_bounds_the_audio(base_url):
    result = post(base_url, "/generate", {"text": "Short.", "temperature": 0, "max_new_tokens": 12}).json()
    samples = check_generation(result, "Short.")
    assert result["usage"]["completion_tokens"] <= 12 + 8  # the delay pattern's steps come on top
    assert 0 < len(samples) <= 12 * 960


@pytest.mark.parametrize("format,channels", [("WAV", 1), ("WAV", 2), ("FLAC", 1), ("MP3", 1)])
def test_voice_clone_from_reference_audio(base_url, format, channels):
    audio = base64.b64encode(clip_bytes("en_woman", format, channels, seconds=4)).decode()
    body = {"text": "Cloned from a clip.", "reference_audio": audio, "reference_text": "The device would work.",
            "seed": 3, **FAST}
    check_generation(post(base_url, "/generate/voice-clone", body).json(), body["text"])


def test_voice_clone_without_transcript(base_url):
    audio = base64.b64encode(clip_bytes("mabel", seconds=3)).decode()
    body = {"text": "No transcript given.", "reference_audio": audio, **FAST}
    check_generation(post(base_url, "/generate/voice-clone", body).json(), body["text"])


def test_multi_speaker_without_voices(base_url):
    body = {"text": "[SPEAKER0] Hi! How are you today?\n[SPEAKER1] I'm well, thanks for asking!",
            "scene_prompt": "A friendly chat in a cafe.", **FAST}
    check_generation(post(base_url, "/generate/multi-speaker", body).json(), body["text"])


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,words", [
    ({}, "text"),
    ({"text": ""}, "empty"),
    ({"text": "   "}, "empty"),
    ({"text": "x" * 5001}, "limit"),
    ({"text": 12}, "text"),
    ({"text": "hi", "temperature": 2.5}, "temperature"),
    ({"text": "hi", "temperature": -1}, "temperature"),
    ({"text": "hi", "top_p": 0}, "top_p"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"text": "hi", "top_k": -1}, "top_k"),
    ({"text": "hi", "top_k": "many"}, "top_k"),
    ({"text": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    ({"text": "hi", "max_new_tokens": 100000}, "max_new_tokens"),
    ({"text": "hi", "seed": -5}, "seed"),
])
def test_generate_rejects_bad_fields(base_url, body, words):
    assert words in detail_of(post(base_url, "/generate", body), 400)


def test_malformed_json_is_a_400_with_detail(base_url):
    response = requests.post(base_url + "/generate", data=b'{"text": "hi",', timeout=10,
                             headers={"Content-Type": "application/json"})
    assert "JSON" in detail_of(response, 400)


def test_unknown_voice_names_it_and_lists_the_available_ones(base_url):
    detail = detail_of(post(base_url, "/generate/voice-clone", {"text": "hi", "reference_voice": "unknown_voice"}), 400)
    assert "'unknown_voice'" in detail and "'belinda'" in detail and "'chadwick'" in detail


@pytest.mark.parametrize("body,words", [
    ({"text": "hi"}, "exactly one"),
    ({"text": "hi", "reference_voice": "belinda", "reference_audio": "UklGRg=="}, "exactly one"),
    ({"text": "hi", "reference_audio": "not base64!!"}, "base64"),
    ({"text": "hi", "reference_audio": base64.b64encode(b"RIFF0000WAVEjunk").decode()}, "decode"),
    ({"text": "hi", "reference_audio": ""}, "exactly one"),
])
def test_voice_clone_rejects_bad_references(base_url, body, words):
    assert words in detail_of(post(base_url, "/generate/voice-clone", body), 400)


def test_voice_clone_rejects_too_short_and_too_long_audio(base_url):
    short = base64.b64encode(clip_bytes("en_man", seconds=0.2)).decode()
    assert "minimum" in detail_of(post(base_url, "/generate/voice-clone", {"text": "hi", "reference_audio": short}), 400)
    samples, rate = sf.read(VOICE_PROMPTS_DIR / "en_man.wav", dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, np.tile(samples, 5), rate, format="WAV")  # about 38 s
    long = base64.b64encode(buffer.getvalue()).decode()
    assert "limit" in detail_of(post(base_url, "/generate/voice-clone", {"text": "hi", "reference_audio": long}), 400)


@pytest.mark.parametrize("body,words", [
    ({"text": "no tags here"}, "SPEAKER"),
    ({"text": "[SPEAKER0] a [SPEAKER1] b", "reference_voices": ["belinda"]}, "one voice per speaker"),
    ({"text": "[SPEAKER0] a", "reference_voices": ["ghost"]}, "'ghost'"),
])
def test_multi_speaker_rejects_bad_dialogues(base_url, body, words):
    assert words in detail_of(post(base_url, "/generate/multi-speaker", body), 400)


def test_unknown_route_and_wrong_method_use_the_detail_body(base_url):
    assert detail_of(requests.get(base_url + "/nothing-here", timeout=5), 404)
    assert detail_of(requests.get(base_url + "/generate", timeout=5), 405)


def test_server_keeps_serving_after_bad_requests(base_url):
    for body in (b"\xff\xfe", b"[]", b'{"text": null}', b'{"text": "hi", "seed": "x"}'):
        requests.post(base_url + "/generate", data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert requests.get(base_url + "/health", timeout=5).json()["status"] == "healthy"
    check_generation(post(base_url, "/generate", {"text": "Still here.", **FAST}).json(), "Still here.")


# --- uploads ---------------------------------------------------------------------------------------

def upload(base_url: str, data: bytes, filename: str, **fields) -> requests.Response:
    return requests.post(base_url + "/upload-voice", files={"file": (filename, data)}, data=fields, timeout=60)


def test_uploaded_voice_is_listed_and_usable_at_once(base_url, server_data_dir):
    response = upload(base_url, clip_bytes("chadwick", "FLAC", seconds=5), "narrator.flac",
                      name="narrator_1", description="Deep narrator", transcript="Oh dear, who left all this junk")
    assert response.status_code == 200, response.text
    # Encoded by the upload, so the voice's first request does not wait for it.
    assert len(list((server_data_dir / "voices" / "narrator_1").glob("codes-*.npy"))) == 1
    voice = response.json()
    assert voice["name"] == "narrator_1" and voice["kind"] == "uploaded" and voice["description"] == "Deep narrator"
    assert abs(voice["duration"] - 5) < 0.05
    assert {"name": "narrator_1", "description": "Deep narrator"} in requests.get(base_url + "/voices", timeout=5).json()
    body = {"text": "Speaking as the uploaded voice.", "reference_voice": "narrator_1", **FAST}
    check_generation(post(base_url, "/generate/voice-clone", body).json(), body["text"])


def test_upload_name_defaults_to_the_file_stem(base_url):
    response = upload(base_url, clip_bytes("en_man", "MP3", seconds=3), "stem_voice.mp3")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "stem_voice"


def test_upload_with_a_numeric_name(base_url):
    response = upload(base_url, clip_bytes("en_man", seconds=2), "x.wav", name="12345")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "12345"


def test_upload_errors(base_url):
    wav = clip_bytes("en_man", seconds=2)
    assert "already" in detail_of(upload(base_url, wav, "a.wav", name="belinda"), 409)
    assert upload(base_url, wav, "a.wav", name="dup_voice").status_code == 200
    assert "already" in detail_of(upload(base_url, wav, "a.wav", name="dup_voice"), 409)
    for bad_name in ("../escape", "a/b", "x" * 65, "héllo", "has space"):
        assert "name" in detail_of(upload(base_url, wav, "a.wav", name=bad_name), 400)
    assert "WAV, MP3 or FLAC" in detail_of(upload(base_url, clip_bytes("en_man", "OGG", seconds=2), "a.ogg", name="oggy"), 400)
    assert "decode" in detail_of(upload(base_url, b"not audio at all", "a.wav", name="junk"), 400)
    assert "empty" in detail_of(upload(base_url, b"", "a.wav", name="empty_one"), 400)
    assert "minimum" in detail_of(upload(base_url, clip_bytes("en_man", seconds=0.1), "a.wav", name="tiny"), 400)
    oversize = b"\0" * (3 * 1024 * 1024)  # the test server's upload limit is 2 MiB
    assert "limit" in detail_of(upload(base_url, oversize, "big.wav", name="big"), 413)
    names = {voice["name"] for voice in requests.get(base_url + "/voices", timeout=5).json()}
    assert not names & {"oggy", "junk", "empty_one", "tiny", "big", "escape"}
