"""What real clients call beyond speech itself, against real server processes: the listings the
OpenAI SDKs, Open WebUI and Home Assistant read, OpenAI's stock voice names, the fields peers accept,
`error.param`, CORS for browser apps on other origins, BentoML's client with a wrong key, WAV files
whose length is known, and the offline API reference."""

from __future__ import annotations

import io
import wave

import bentoml
import numpy as np
import openai
import pytest
import requests
from bentoml.exceptions import BentoMLException

from paths import VOICE_PROMPTS_DIR

FAST = {"seed": 11, "max_new_tokens": 40, "temperature": 0.8}
STOCK_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                "shimmer", "verse")
APP_ORIGIN = "http://voice-app.example"
KEY = "surface-key"


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def pcm(client, **fields) -> bytes:
    extra = {**FAST, **fields.pop("extra_body", {})}
    fields.setdefault("model", "tts-1")
    return client.audio.speech.create(response_format="pcm", extra_body=extra, **fields).content


# --- listings --------------------------------------------------------------------------------------

def test_models_list_and_retrieve_through_the_sdk(client):
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids[0] == "higgs-audio-v2"
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-tts", "tiny-random"} <= set(ids)
    for model in models.data:
        assert model.object == "model" and model.owned_by and model.created > 0
    assert client.models.retrieve("tts-1").id == "tts-1"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("whisper-1")
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    assert "whisper-1" in missing.value.message


def test_audio_models_as_open_webui_reads_them(base_url):
    body = requests.get(base_url + "/v1/audio/models", timeout=10).json()
    assert [model["id"] for model in body["models"]][:2] == ["higgs-audio-v2", "tts-1"]


def test_audio_voices_as_open_webui_and_home_assistant_read_them(base_url):
    body = requests.get(base_url + "/v1/audio/voices", timeout=10).json()
    voices = {voice["id"]: voice for voice in body["voices"]}
    assert {"belinda", "chadwick", "en_man", "en_woman", "mabel", "zh_man_sichuan"} <= set(voices)
    assert all(voice["name"] == voice_id for voice_id, voice in voices.items())
    assert {voices[name]["alias_of"] for name in STOCK_VOICES} <= {"belinda", "chadwick", "en_man", "en_woman", "mabel"}
    assert voices["belinda"]["alias_of"] is None
    limited = requests.get(base_url + "/v1/audio/voices", params={"limit": 3}, timeout=10).json()["voices"]
    assert limited == body["voices"][:3]
    refused = requests.get(base_url + "/v1/audio/voices", params={"limit": 0}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "limit"


# --- OpenAI's stock voice names --------------------------------------------------------------------

def test_a_stock_voice_name_speaks_in_the_voice_it_stands_for(client, base_url):
    alias_of = {voice["id"]: voice["alias_of"]
                for voice in requests.get(base_url + "/v1/audio/voices", timeout=10).json()["voices"]}
    for alias in ("alloy", "onyx"):
        assert pcm(client, voice=alias, input="Stock names work.") == \
            pcm(client, voice=alias_of[alias], input="Stock names work.")


def test_an_uploaded_voice_named_like_an_alias_wins(client, base_url):
    clip = (VOICE_PROMPTS_DIR / "zh_man_sichuan.wav").read_bytes()
    uploaded = requests.post(base_url + "/upload-voice", files={"file": ("nova.wav", clip, "audio/wav")},
                             data={"name": "nova"}, timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    try:
        assert pcm(client, voice="nova", input="Mine now.") != pcm(client, voice="belinda", input="Mine now.")
        listed = requests.get(base_url + "/v1/audio/voices", timeout=10).json()["voices"]
        assert [voice for voice in listed if voice["id"] == "nova"] == [{"id": "nova", "name": "nova", "alias_of": None}]
    finally:
        assert requests.delete(base_url + "/voices/nova", timeout=10).status_code == 204
    assert requests.delete(base_url + "/voices/alloy", timeout=10).status_code == 404  # never the aliased voice
    assert requests.get(base_url + "/voices/en_woman", timeout=10).status_code == 200


def test_seed_routes_take_stock_names_too(base_url):
    response = requests.post(base_url + "/generate/voice-clone",
                             json={"text": "Hello.", "reference_voice": "shimmer", **FAST}, timeout=120)
    assert response.status_code == 200, response.text


# --- what peers send -------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"stream": True},
    {"model": None},
    {"model": "tiny-random"},  # the served model's path
])
def test_fields_peers_send_are_accepted(base_url, extra):
    body = {"model": "tts-1", "input": "Accepted.", "voice": "en_man", "response_format": "pcm", **FAST, **extra}
    if body["model"] is None:
        del body["model"]
    response = requests.post(base_url + "/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.content) > 0


@pytest.mark.parametrize("fields,param,words", [
    ({"speed": 9}, "speed", "speed"),
    ({"response_format": "ogg"}, "response_format", "response_format"),
    ({"sped": 1.5}, "sped", "unknown field 'sped'"),
    ({"model": "whisper-1"}, "model", "whisper-1"),
    ({"voice": "nobody"}, "voice", "'nobody'"),
    ({"input": " "}, "input", "must not be empty"),
    ({"max_new_tokens": 10 ** 6}, "max_new_tokens", "max_new_tokens"),
    ({"voice": None, "ref_audio": "not base64!"}, "ref_audio", "base64"),
    ({"stream": False, "stream_format": "sse"}, "stream", "stream"),
])
def test_field_errors_name_their_param(client, fields, param, words):
    request = {"model": "tts-1", "voice": "belinda", "input": "Error test."}
    extra = {key: fields.pop(key) for key in list(fields) if key not in request and key not in ("response_format", "speed")}
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.speech.create(**{**request, **fields}, extra_body=extra)
    assert raised.value.body["param"] == param, raised.value.body
    assert words in raised.value.message


def test_a_whole_wav_carries_its_real_length(base_url):
    body = {"model": "tts-1", "input": "A whole file.", "voice": "belinda", "response_format": "wav",
            "stream": False, **FAST}
    response = requests.post(base_url + "/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with wave.open(io.BytesIO(response.content)) as reader:
        frames = reader.getnframes()
        assert reader.getframerate() == 24000 and frames == (len(response.content) - 44) // 2
    assert 0 < frames / 24000 < 5
    streamed = requests.post(base_url + "/v1/audio/speech", json={**body, "stream": True}, timeout=120)
    samples = np.frombuffer(streamed.content[44:], dtype="<i2")
    assert np.array_equal(samples, np.frombuffer(response.content[44:], dtype="<i2"))


# --- browsers on other origins, keys, BentoML's client -----------------------------------------------

@pytest.fixture(scope="module")
def guarded(start_server):
    """A server with an API key that lets one other origin's pages call it."""
    server = start_server(extra_env={"HIGGS_API_KEYS": KEY, "HIGGS_CORS_ORIGINS": APP_ORIGIN})
    server.wait_until(("healthy",))
    yield server
    server.stop()


def preflight(url: str, origin: str) -> requests.Response:
    return requests.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization,content-type"}, timeout=10)


def test_cors_preflight_is_answered_before_keys(guarded):
    for path in ("/v1/audio/speech", "/generate", "/voices/belinda", "/v1/models"):
        answer = preflight(guarded.url + path, APP_ORIGIN)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        assert answer.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in preflight(guarded.url + "/generate", "http://evil.example").headers


def test_cors_marks_answers_with_and_without_a_key(guarded):
    headers = {"Origin": APP_ORIGIN}
    without = requests.get(guarded.url + "/v1/models", headers=headers, timeout=10)
    assert without.status_code == 401 and without.headers["access-control-allow-origin"] == APP_ORIGIN
    assert without.json()["error"]["type"] == "authentication_error"
    with_key = requests.post(guarded.url + "/v1/audio/speech", timeout=120,
                             headers={**headers, "Authorization": f"Bearer {KEY}"},
                             json={"input": "From a browser app.", "voice": "alloy", "response_format": "pcm", **FAST})
    assert with_key.status_code == 200 and with_key.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in with_key.headers["access-control-expose-headers"].lower()


def test_without_cors_settings_other_origins_get_no_grant(base_url):
    answer = preflight(base_url + "/v1/audio/speech", APP_ORIGIN)
    assert "access-control-allow-origin" not in answer.headers
    plain = requests.get(base_url + "/v1/models", headers={"Origin": APP_ORIGIN}, timeout=10)
    assert "access-control-allow-origin" not in plain.headers


def test_bentoml_client_with_a_wrong_key_sees_the_authentication_error(guarded):
    with bentoml.SyncHTTPClient(guarded.url, token="wrong-key", server_ready_timeout=30) as client:
        with pytest.raises(BentoMLException) as refused:
            client.generate(text="Hello.", max_new_tokens=20)
    assert refused.value.error_code == 401 and "invalid API key" in str(refused.value)
    with bentoml.SyncHTTPClient(guarded.url, token=KEY, server_ready_timeout=30) as client:
        assert client.generate(text="Hello.", max_new_tokens=20, seed=1)["finish_reason"] in ("stop", "length", "guard")


# --- the API reference -----------------------------------------------------------------------------

def test_the_reference_documents_every_route(guarded):
    page = requests.get(guarded.url + "/docs", timeout=10)
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "://" not in page.text  # nothing from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert requests.get(guarded.url + f"/docs/assets/{asset}", timeout=10).status_code == 200
    spec = requests.get(guarded.url + "/docs.json", timeout=10).json()
    assert spec["info"]["title"] == "Higgs Audio v2 server"
    assert "/v1/audio/speech/stream" in spec["info"]["description"]  # the WebSocket, which OpenAPI cannot list
    paths = set(spec["paths"])
    assert {"/generate", "/generate/voice-clone", "/generate/multi-speaker", "/upload-voice", "/health", "/voices",
            "/voices/{name}", "/voices/{name}/audio", "/v1/audio/speech", "/v1/models", "/v1/models/{model_id}",
            "/v1/audio/voices", "/v1/audio/models"} <= paths
    body = spec["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/SpeechRequest") and "stream" in spec["components"]["schemas"]["SpeechRequest"]["properties"]
