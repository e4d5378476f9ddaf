"""Replicas on one data directory (a shared volume): voices uploaded or deleted through one are seen
by the other at once, and codes follow the audio, not the name."""

from __future__ import annotations

import concurrent.futures

import pytest
import requests

from audio_checks import check_generation
from test_server_api import clip_bytes, upload

CLONE = {"text": "Both replicas speak with the same voice.", "seed": 11, "temperature": 0.8, "max_new_tokens": 40}


@pytest.fixture(scope="module")
def replicas(start_server, tmp_path_factory) -> tuple[str, str]:
    data_dir = tmp_path_factory.mktemp("shared-data")
    servers = [start_server(data_dir), start_server(data_dir)]
    for server in servers:
        server.wait_until(("healthy",))
    return servers[0].url, servers[1].url


def clone(url: str, voice: str) -> requests.Response:
    return requests.post(url + "/generate/voice-clone", json={**CLONE, "reference_voice": voice}, timeout=120)


def test_uploads_and_deletes_on_one_replica_are_seen_by_the_other_at_once(replicas):
    first, second = replicas
    assert upload(first, clip_bytes("chadwick", seconds=4), "guest.wav", name="guest").status_code == 200
    assert {"name": "guest", "description": ""} in requests.get(second + "/voices", timeout=10).json()
    check_generation(clone(second, "guest").json(), CLONE["text"])

    assert requests.delete(second + "/voices/guest", timeout=10).status_code == 204
    assert requests.get(first + "/voices/guest", timeout=10).status_code == 404
    assert "not found" in clone(first, "guest").json()["detail"]


def test_one_name_uploaded_on_both_replicas_at_once_gives_one_voice_and_one_409(replicas):
    clips = {url: clip_bytes(voice, seconds=3) for url, voice in zip(replicas, ("belinda", "mabel"))}
    for attempt in range(3):
        name = f"racer_{attempt}"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda url: upload(url, clips[url], "clip.wav", name=name), replicas))
        assert sorted(answer.status_code for answer in answers) == [200, 409], [a.text for a in answers]
        conflict = next(answer for answer in answers if answer.status_code == 409)
        assert "already exists" in conflict.json()["detail"]
        for url in replicas:
            assert [v["name"] for v in requests.get(url + "/voices", timeout=10).json()].count(name) == 1


def test_a_name_deleted_and_uploaded_again_elsewhere_speaks_with_the_new_audio(replicas):
    first, second = replicas
    assert upload(first, clip_bytes("chadwick", seconds=4), "host.wav", name="host").status_code == 200
    old = clone(second, "host").json()["audio_base64"]  # the second replica now holds the old codes

    assert requests.delete(first + "/voices/host", timeout=10).status_code == 204
    assert upload(first, clip_bytes("en_woman", seconds=4), "host.wav", name="host").status_code == 200
    new_on_first = clone(first, "host").json()["audio_base64"]
    new_on_second = clone(second, "host").json()["audio_base64"]
    assert new_on_second == new_on_first != old
