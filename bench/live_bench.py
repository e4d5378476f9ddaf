"""Voice agents and long texts: how soon a live session speaks, what its later segments compute, and
what continuing the context saves long-form text.

    python bench/live_bench.py            # small-random on this CPU, default settings

Over HTTP, against a server at its default settings with a 30 s reference voice uploaded and warmed up:
1. a live session (`/v1/audio/speech/stream`) fed a five-sentence reply token by token at a language
   model's pace: first audio after the first sentence's last character was sent, against a plain
   `/v1/audio/speech` request's first audio for the same sentence and voice (the median of 3 each),
   and the prompt tokens its later segments computed;
2. a five-chunk text in the same voice on `/v1/audio/speech`: computed / whole prompt tokens (from
   `speech.audio.done`).
In this process, with the runtime at the same settings: 4 long-form streams at once, the largest gap
between audio pieces at a text-chunk boundary against the largest inside a chunk, with continued
contexts and without them (every chunk prefilled afresh, the voice from the prefix cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server_process import BenchServer, stream_pcm  # noqa: E402
from voice_clip import REFERENCE_SECONDS, reference_wav  # noqa: E402

from higgs_runtime import loading  # noqa: E402
from higgs_runtime.audio import decode_audio  # noqa: E402
from higgs_runtime.config import Settings  # noqa: E402
from higgs_runtime.speech import Sampling, SpeechPlan, Synthesizer  # noqa: E402
from higgs_runtime.voices import CATALOG_PATH, VoiceStore  # noqa: E402

REPLY = ("Thanks for calling, I can help with that. Your order left our warehouse this morning. It should "
         "arrive on Thursday before noon. The courier will text you an hour ahead. Is there anything else?")
FIRST_SENTENCE = "Thanks for calling, I can help with that."
TOKEN_INTERVAL_S = 0.03  # a language model writing about 33 tokens a second
FRAMES = 250  # audio per live segment or text chunk at most (10 s), about what such a sentence takes
# Five chunks of about 280 characters each (HIGGS_LONG_FORM_CHUNK_CHARS is 300).
LONG_TEXT = " ".join(
    f"Part {part} of the story begins here, and it goes on for a while so that the chunk is long enough. "
    f"The narrator describes the place, the weather and the people in it, one after another, slowly. "
    f"Then something happens, and part {part} ends with a question that the next part answers."
    for part in range(1, 6))
LONG_FRAMES = 400  # per chunk: about 16 s, what some 280 characters take to say


def live_session(url: str, seed: int) -> dict:
    """One session: first audio after the first sentence's last character, and each segment's usage."""
    words = REPLY.split(" ")
    with connect(url.replace("http://", "ws://") + "/v1/audio/speech/stream", max_size=2 ** 24) as ws:
        ws.send(json.dumps({"type": "session.config", "voice": "bench30", "seed": seed, "max_new_tokens": FRAMES}))
        assert json.loads(ws.recv())["type"] == "session.created"
        first_sentence_sent, first_audio, done = None, None, []
        for index, word in enumerate(words):
            ws.send(json.dumps({"type": "input.text", "text": word + (" " if index + 1 < len(words) else "")}))
            if first_sentence_sent is None and " ".join(words[:index + 1]) == FIRST_SENTENCE:
                first_sentence_sent = time.perf_counter()
            time.sleep(TOKEN_INTERVAL_S)
            first_audio = first_audio or _drain(ws, done)
        ws.send(json.dumps({"type": "input.done"}))
        while True:
            message = ws.recv(timeout=600)
            if isinstance(message, bytes):
                first_audio = first_audio or time.perf_counter()
                continue
            event = json.loads(message)
            if event["type"] == "segment.done":
                done.append(event)
            if event["type"] == "session.done":
                break
    return {"first": first_audio - first_sentence_sent, "segments": done}


def _drain(ws, done: list) -> float | None:
    """Reads what has arrived so far; the time of the first audio among it."""
    first = None
    while True:
        try:
            message = ws.recv(timeout=0)
        except TimeoutError:
            return first
        if isinstance(message, bytes):
            first = first or time.perf_counter()
        elif (event := json.loads(message))["type"] == "segment.done":
            done.append(event)


def long_form_usage(url: str) -> dict:
    body = {"model": "tts-1", "input": LONG_TEXT, "voice": "bench30", "seed": 7, "max_new_tokens": LONG_FRAMES,
            "response_format": "pcm", "stream_format": "sse"}
    with requests.post(url + "/v1/audio/speech", json=body, stream=True, timeout=900) as response:
        response.raise_for_status()
        events = [json.loads(line[6:]) for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    return events[-1]["usage"]


def over_http(preset: str) -> dict:
    server = BenchServer(preset)
    try:
        wav, transcript = reference_wav()
        requests.post(server.url + "/upload-voice", files={"file": ("bench30.wav", wav)},
                      data={"name": "bench30", "transcript": transcript}, timeout=120).raise_for_status()
        plain = {"model": "tts-1", "input": FIRST_SENTENCE, "voice": "bench30", "max_new_tokens": FRAMES}
        stream_pcm(server.url, {**plain, "seed": 0})  # warm-up: the voice's prefix is cached from here on
        plain_first = statistics.median(times[0] - started for started, times, _ in
                                        (stream_pcm(server.url, {**plain, "seed": seed}) for seed in (1, 2, 3)))
        sessions = [live_session(server.url, seed) for seed in (1, 2, 3)]
        later = [event["usage"]["prefill_tokens"] for session in sessions for event in session["segments"][1:]]
        return {"plain first": plain_first, "live first": statistics.median(s["first"] for s in sessions),
                "later segments computed": later,
                "later segments prompt": [event["usage"]["prompt_tokens"] for s in sessions for event in s["segments"][1:]],
                "long form": long_form_usage(server.url)}
    finally:
        server.stop()


def chunk_gaps(preset: str, continued: bool) -> dict:
    """4 long-form streams at once, in process: the largest gap between audio pieces at a text-chunk
    boundary and inside a chunk."""
    work = Path(tempfile.mkdtemp(prefix="higgs-live-bench-"))
    settings = Settings(model_path=preset, audio_tokenizer_path=preset, device="cpu",
                        cache_dir=Path(tempfile.gettempdir()) / "higgs-bench-cache", data_dir=work)
    voices = VoiceStore(CATALOG_PATH, settings.presets_dir, settings.uploads_dir)
    synthesizer = Synthesizer(loading.load(settings), voices, settings)
    wav, transcript = reference_wav()
    reference = decode_audio(wav, min_seconds=0, max_seconds=60)
    hop = synthesizer.codec.samples_per_frame

    async def one(seed: int) -> tuple[list[float], list[float]]:
        plan = synthesizer.plan_clone(LONG_TEXT, None, reference_audio=reference, reference_text=transcript)
        if not continued:  # every chunk prefilled afresh (the voice still comes from the prefix cache)
            plan.keeps_context = lambda index: False
        stream = synthesizer.stream(plan, Sampling(0.7, 0.95, 50, LONG_FRAMES, seed))
        boundary, inside, last = [], [], None
        async for piece in stream:
            now = time.perf_counter()
            # A chunk's first piece starts where the chunks before it ended.
            starts, offset = set(), 0
            for _, codes in plan.spoken:
                offset += codes.shape[1] * hop
                starts.add(offset)
            if last is not None:
                (boundary if stream.samples_sent - len(piece) in starts else inside).append(now - last)
            last = now
        return boundary, inside

    async def all_four():
        await one(0)  # warm-up, and the voice's prefix cached
        return await asyncio.gather(*(one(seed) for seed in (1, 2, 3, 4)))

    try:
        results = asyncio.run(all_four())
    finally:
        synthesizer.close()
    return {"boundary": max(max(b, default=0.0) for b, _ in results), "inside": max(max(i) for _, i in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small-random", choices=["tiny-random", "small-random"])
    args = parser.parse_args()
    http = over_http(args.preset)
    with_contexts, without = chunk_gaps(args.preset, continued=True), chunk_gaps(args.preset, continued=False)
    usage = http["long form"]
    print(f"preset {args.preset} | CPU | default settings | {REFERENCE_SECONDS:.0f} s reference voice\n")
    print("| measure | figure | goal |")
    print("|---|---|---|")
    ratio = http["live first"] / http["plain first"]
    print(f"| live session: first audio after the first sentence's last character (median of 3) | "
          f"{http['live first']:.2f} s | |")
    print(f"| plain /v1/audio/speech first audio, same sentence and voice (median of 3) | {http['plain first']:.2f} s | |")
    print(f"| live / plain first audio | **{ratio:.2f}x** | <= 1.5x |")
    print(f"| later segments: computed prompt tokens, max (mean) of {len(http['later segments computed'])} | "
          f"**{max(http['later segments computed'])}** ({statistics.mean(http['later segments computed']):.0f}) "
          f"of {statistics.mean(http['later segments prompt']):.0f} | ~100 |")
    print(f"| five-chunk text: computed / whole prompt tokens | {usage['prefill_tokens']} / {usage['input_tokens']} = "
          f"**{usage['prefill_tokens'] / usage['input_tokens']:.1%}** | <= 10% |")
    for label, gaps in (("continued contexts", with_contexts), ("chunks prefilled afresh", without)):
        print(f"| 4 long-form streams, {label}: largest gap at a chunk boundary / inside a chunk | "
              f"{gaps['boundary']:.2f} / {gaps['inside']:.2f} s = **{gaps['boundary'] / gaps['inside']:.2f}x** | <= 2x |")


if __name__ == "__main__":
    main()
