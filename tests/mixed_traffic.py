"""Mixed traffic against a running server, as careless clients make it: plain and streamed speech,
streams abandoned half-way, one-off clones with ever new clips, uploads and deletes, dialogue, long
texts and bad requests. Used by the soak test (`tests/api/test_memory_soak.py`) and `bench/memory_soak.py`."""

from __future__ import annotations

import base64
import io
import itertools
import random
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

SHORT = {"max_new_tokens": 20}
LONG_TEXT = " ".join(f"Part {i} of a longer text goes on for a little while." for i in range(5))
CLIP_RATES = (16000, 22050, 24000, 44100, 48000, 16001)


class MixedTraffic:
    """`clients` threads sending a random mix of requests until `stop()`; `counts` tallies answers by
    kind and status. A status the kind does not expect is a failure (`failures`)."""

    KINDS = ("plain", "streamed", "abandoned", "clone", "upload_and_delete", "dialogue", "long_text", "bad")

    def __init__(self, url: str, voice_clip: Path, clients: int, seed: int = 0, headers: dict | None = None,
                 kinds: tuple[str, ...] = KINDS):
        self.url, self.headers, self.clients = url, headers or {}, clients
        self.kinds = [getattr(self, f"_{kind}") for kind in kinds]
        clip, self.clip_rate = sf.read(voice_clip, dtype="float32", always_2d=True)
        self.clip = clip.mean(axis=1)
        self.counts: Counter = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(random.Random(seed + i), i), daemon=True)
                         for i in range(clients)]
        self._names = itertools.count()
        self._lock = threading.Lock()

    def start(self) -> "MixedTraffic":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _client(self, rng: random.Random, index: int) -> None:
        while not self._stop.is_set():
            kind = rng.choice(self.kinds)
            try:
                status = kind(rng, index)
            except requests.RequestException as exc:
                status = f"{type(exc).__name__}"
            with self._lock:
                self.counts[(kind.__name__.strip("_"), status)] += 1
                expected = {200, 204} if kind != self._bad else {400, 404, 405, 415}
                if status not in expected:
                    self.failures.append(f"{kind.__name__}: {status}")

    def _post(self, path: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers, timeout=300, **kwargs)

    def _plain(self, rng, _) -> int:
        return self._post("/generate", {"text": f"Hello number {rng.randrange(10**6)}.", **SHORT}).status_code

    def _streamed(self, rng, _) -> int:
        body = {"input": f"Streaming {rng.randrange(10**6)}.", "voice": "belinda", "response_format": "pcm",
                "max_new_tokens": 40}
        with self._post("/v1/audio/speech", body, stream=True) as response:
            for _ in response.iter_content(chunk_size=None):
                pass
            return response.status_code

    def _abandoned(self, rng, _) -> int:
        body = {"input": "A stream nobody listens to for long. " * 3, "voice": "en_man", "response_format": "pcm",
                "max_new_tokens": 200, "stream": True}
        with self._post("/v1/audio/speech", body, stream=True) as response:
            next(response.iter_content(chunk_size=1024), None)
            return response.status_code  # closing the response leaves the stream half-read

    def _new_clip(self, rng) -> bytes:
        seconds = rng.uniform(1.0, 4.0)
        start = rng.randrange(0, max(1, len(self.clip) - int(seconds * self.clip_rate)))
        samples = self.clip[start:start + int(seconds * self.clip_rate)] * rng.uniform(0.3, 1.0)
        buffer = io.BytesIO()
        sf.write(buffer, samples.astype(np.float32), rng.choice(CLIP_RATES), format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    def _clone(self, rng, _) -> int:
        clip = base64.b64encode(self._new_clip(rng)).decode()
        return self._post("/generate/voice-clone", {"text": "A one-off voice.", "reference_audio": clip,
                                                    **SHORT}).status_code

    def _upload_and_delete(self, rng, index) -> int:
        name = f"soak-{index}-{next(self._names)}"
        response = requests.post(self.url + "/upload-voice", files={"file": ("clip.wav", self._new_clip(rng))},
                                 data={"name": name}, headers=self.headers, timeout=300)
        if response.status_code != 200:
            return response.status_code
        generated = self._post("/generate/voice-clone", {"text": "Uploaded.", "reference_voice": name, **SHORT})
        deleted = requests.delete(f"{self.url}/voices/{name}", headers=self.headers, timeout=60)
        return generated.status_code if generated.status_code != 200 else deleted.status_code

    def _dialogue(self, rng, _) -> int:
        return self._post("/generate/multi-speaker", {"text": "[SPEAKER0] Hi there. [SPEAKER1] Hello.",
                                                      "reference_voices": ["belinda", "chadwick"],
                                                      **SHORT}).status_code

    def _long_text(self, rng, _) -> int:
        return self._post("/generate", {"text": LONG_TEXT, "max_new_tokens": 15}).status_code

    def _bad(self, rng, _) -> int:
        return rng.choice([
            lambda: self._post("/generate", {"text": "hi", "temperature": "hot"}),
            lambda: self._post("/generate", {"text": ""}),
            lambda: requests.post(self.url + "/generate", data="text=hi", headers=self.headers, timeout=60),
            lambda: requests.get(f"{self.url}/voices/missing-{rng.randrange(10**9)}", headers=self.headers, timeout=60),
            lambda: requests.get(f"{self.url}/no/such/{rng.randrange(10**9)}", headers=self.headers, timeout=60),
            lambda: self._post("/generate/voice-clone", {"text": "hi", "reference_audio": "bm90IGF1ZGlv"}),
        ])().status_code


def sample_rss_mib(process, seconds: float, every: float = 1.0) -> list[float]:
    """The process's resident memory (MiB) every `every` seconds for `seconds`."""
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(process.memory_info().rss / 2**20)
        time.sleep(every)
    return samples
