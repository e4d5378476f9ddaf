"""Server behaviour across processes and under load: restarts, failed loads, the BentoML client,
concurrency, back-pressure."""

from __future__ import annotations

import concurrent.futures
import time

import bentoml
import pytest
import requests
import soundfile as sf

from audio_checks import check_generation
from paths import VOICE_PROMPTS_DIR


def test_bentoml_client_calls_each_api_with_keywords(base_url, tmp_path):
    with bentoml.SyncHTTPClient(base_url, timeout=120) as client:
        result = client.generate(text="Hello from the BentoML client.", seed=11, max_new_tokens=30)
        check_generation(result, "Hello from the BentoML client.")
        result = client.generate_voice_clone(text="Cloned.", reference_voice="en_man", seed=1, max_new_tokens=30)
        check_generation(result, "Cloned.")
        result = client.generate_multi_speaker(text="[SPEAKER0] One. [SPEAKER1] Two.",
                                               reference_voices=["belinda", "chadwick"], max_new_tokens=30)
        check_generation(result, "[SPEAKER0] One. [SPEAKER1] Two.")
        clip = tmp_path / "client_voice.wav"
        samples, rate = sf.read(VOICE_PROMPTS_DIR / "en_woman.wav")
        sf.write(clip, samples[: 3 * rate], rate)
        voice = client.upload_voice(file=clip, name="client_voice", description="From the client")
        assert voice["name"] == "client_voice" and voice["kind"] == "uploaded"
        with pytest.raises(bentoml.exceptions.BentoMLException, match="temperature"):
            client.generate(text="hi", temperature=9)


def test_uploaded_voices_survive_a_restart(start_server, tmp_path):
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    first.wait_until(("healthy",))
    with open(VOICE_PROMPTS_DIR / "en_man.wav", "rb") as clip:
        response = requests.post(first.url + "/upload-voice", files={"file": ("keeper.wav", clip)},
                                 data={"description": "kept across restarts", "transcript": "Maintaining your ability"},
                                 timeout=60)
    assert response.status_code == 200, response.text
    first.stop()

    second = start_server(data_dir)
    second.wait_until(("healthy",))
    voices = requests.get(second.url + "/voices", timeout=5).json()
    assert {"name": "keeper", "description": "kept across restarts"} in voices
    body = {"text": "Back after a restart.", "reference_voice": "keeper", "max_new_tokens": 30}
    check_generation(requests.post(second.url + "/generate/voice-clone", json=body, timeout=120).json(), body["text"])
    assert not list((data_dir / "voices").glob(".tmp-*"))


def test_health_answers_while_the_model_loads(start_server, tmp_path):
    """With an empty model cache the preset is built first (seconds): meanwhile /health says so and
    generation answers 503 with a detail, then the server becomes healthy."""
    loading = start_server(tmp_path / "data", extra_env={"HIGGS_CACHE_DIR": str(tmp_path / "empty-cache")})
    health = loading.wait_until(("loading", "healthy"))
    assert health["status"] == "loading" and health["model_loaded"] is False and health["device"] == "cpu"
    response = requests.post(loading.url + "/generate", json={"text": "Too early."}, timeout=10)
    assert response.status_code == 503 and "still loading" in response.json()["detail"]
    loading.wait_until(("healthy",))
    check_generation(requests.post(loading.url + "/generate", json={"text": "Ready now.", "max_new_tokens": 20},
                                   timeout=60).json(), "Ready now.")
    loading.stop()


def test_a_failed_load_is_reported_in_health_and_every_503(start_server, tmp_path):
    broken = start_server(tmp_path / "data", model_path=str(tmp_path / "no-such-model"))
    health = broken.wait_until(("unhealthy",))
    assert health["model_loaded"] is False and "no-such-model" in health["error"]
    for path in ("/generate", "/generate/voice-clone", "/generate/multi-speaker"):
        response = requests.post(broken.url + path, json={"text": "[SPEAKER0] hi", "reference_voice": "belinda"}, timeout=10)
        assert response.status_code == 503
        assert "failed to load" in response.json()["detail"] and "no-such-model" in response.json()["detail"]
    broken.stop()


def generate_many(url: str, bodies: list[dict]) -> tuple[list[dict], float]:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda body: requests.post(url + "/generate", json=body, timeout=300), bodies))
    return results, time.monotonic() - started


def test_concurrent_requests_match_single_runs_and_share_the_time(base_url):
    bodies = [{"text": f"Concurrent request number {i}.", "seed": i, "temperature": 0.8, "max_new_tokens": 120}
              for i in range(8)]
    singles, single_times = [], []
    for body in bodies:
        responses, elapsed = generate_many(base_url, [body])
        singles.append(responses[0].json())
        single_times.append(elapsed)
    together, concurrent_time = generate_many(base_url, bodies)
    for body, alone, response in zip(bodies, singles, together):
        assert response.status_code == 200, response.text
        shared = check_generation(response.json(), body["text"])
        assert response.json()["audio_base64"] == alone["audio_base64"]
        assert len(shared) > 0
    # Eight requests batched together take far less than eight single runs.
    assert concurrent_time < 0.6 * sum(single_times), (concurrent_time, single_times)


def test_a_full_queue_answers_429(start_server, tmp_path):
    busy = start_server(tmp_path / "data", extra_env={"HIGGS_MAX_BATCH_SIZE": "1", "HIGGS_MAX_QUEUE_SIZE": "1",
                                                      "HIGGS_RUNAWAY_GUARD_MULTIPLE": "0"})
    busy.wait_until(("healthy",))
    long_body = {"text": "Keep the engine busy.", "temperature": 0, "max_new_tokens": 2000}
    responses, _ = generate_many(busy.url, [long_body] * 4)
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
    rejected = next(response for response in responses if response.status_code == 429)
    assert "busy" in rejected.json()["detail"]
    assert requests.get(busy.url + "/health", timeout=5).json()["status"] == "healthy"
    busy.stop()
