import concurrent.futures
import hashlib
import json
import os
import shutil
import time

import numpy as np
import pytest

from higgs_runtime.audio import SAMPLE_RATE
from higgs_runtime.config import DEFAULT_VOICE_SOURCE
from higgs_runtime.voices import (
    ALREADY_PRESENT,
    CATALOG_PATH,
    OK,
    InvalidVoiceName,
    VoiceExists,
    VoiceNotFound,
    VoiceStore,
    fetch_presets,
    load_catalog,
    main,
)
from paths import VOICE_PROMPTS_DIR

CATALOG = load_catalog(CATALOG_PATH)
PRESET_NAMES = [entry.name for entry in CATALOG]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_presets(presets_dir, names=PRESET_NAMES):
    presets_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(VOICE_PROMPTS_DIR / f"{name}.wav", presets_dir / f"{name}.wav")


@pytest.fixture
def dirs(tmp_path):
    presets, uploads = tmp_path / "presets", tmp_path / "voices"
    install_presets(presets, ["en_man", "belinda", "chadwick"])
    return presets, uploads


def new_store(dirs) -> VoiceStore:
    presets, uploads = dirs
    return VoiceStore(CATALOG_PATH, presets, uploads)


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_catalog_matches_the_shared_voice_prompts():
    sums = dict(reversed(line.split()) for line in (VOICE_PROMPTS_DIR / "SHA256SUMS").read_text().splitlines())
    assert sorted(PRESET_NAMES) == sorted(path.stem for path in VOICE_PROMPTS_DIR.glob("*.wav"))
    for entry in CATALOG:
        assert entry.sha256 == sums[f"{entry.name}.wav"] == sha256(VOICE_PROMPTS_DIR / f"{entry.name}.wav")
        assert entry.transcript == (VOICE_PROMPTS_DIR / f"{entry.name}.txt").read_text(encoding="utf-8").strip()
        assert entry.source_url == f"{DEFAULT_VOICE_SOURCE}/{entry.name}.wav"
        assert entry.description and entry.language and entry.license_note


def test_fetch_from_a_local_directory(tmp_path):
    dest = tmp_path / "presets"
    assert fetch_presets(CATALOG, str(VOICE_PROMPTS_DIR), dest) == dict.fromkeys(PRESET_NAMES, OK)
    for entry in CATALOG:
        assert sha256(dest / f"{entry.name}.wav") == entry.sha256
    assert fetch_presets(CATALOG, str(VOICE_PROMPTS_DIR), dest) == dict.fromkeys(PRESET_NAMES, ALREADY_PRESENT)
    assert sorted(path.name for path in dest.iterdir()) == sorted(f"{name}.wav" for name in PRESET_NAMES)


def test_fetch_refuses_a_corrupted_file_and_keeps_going(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "presets"
    install_presets(source)
    damaged = bytearray((source / "mabel.wav").read_bytes())
    damaged[5000] ^= 0xFF
    (source / "mabel.wav").write_bytes(bytes(damaged))
    (source / "en_man.wav").unlink()

    results = fetch_presets(CATALOG, str(source), dest)

    assert results["mabel"].startswith("failed: checksum mismatch")
    assert results["en_man"].startswith("failed:")
    assert all(results[name] == OK for name in PRESET_NAMES if name not in ("mabel", "en_man"))
    assert sorted(path.name for path in dest.iterdir()) == sorted(
        f"{name}.wav" for name in PRESET_NAMES if name not in ("mabel", "en_man")
    )


def test_fetch_replaces_a_damaged_installed_file(tmp_path):
    dest = tmp_path / "presets"
    dest.mkdir()
    (dest / "en_man.wav").write_bytes(b"truncated")
    assert fetch_presets(CATALOG, str(VOICE_PROMPTS_DIR), dest)["en_man"] == OK
    assert sha256(dest / "en_man.wav") == CATALOG[PRESET_NAMES.index("en_man")].sha256


def test_fetch_command_line(tmp_path, capsys):
    dest = tmp_path / "presets"
    assert main(["fetch", "--source", str(VOICE_PROMPTS_DIR), "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}: {OK}" for name in PRESET_NAMES]
    assert main(["fetch", "--source", str(tmp_path / "missing"), "--dest", str(tmp_path / "other")]) == 1


def test_store_lists_installed_presets_then_uploads(dirs):
    store = new_store(dirs)
    store.add_upload("zeta", tone(), "last", None)
    store.add_upload("alpha", tone(), "first", "hello there")

    voices = store.list()

    assert [voice.name for voice in voices] == ["belinda", "chadwick", "en_man", "alpha", "zeta"]
    assert [voice.kind for voice in voices] == ["preset"] * 3 + ["uploaded"] * 2
    belinda = voices[0]
    assert belinda.transcript.startswith("Twas the night")
    assert belinda.created is None
    assert belinda.duration == pytest.approx(10.17, abs=0.01)
    assert store.names() == [voice.name for voice in voices]


def test_missing_or_damaged_presets_are_not_listed(dirs):
    presets, _ = dirs
    (presets / "mabel.wav").write_bytes(b"not the real clip")
    store = new_store(dirs)
    assert "mabel" not in store.names()
    assert "en_woman" not in store.names()
    with pytest.raises(VoiceNotFound):
        store.get("mabel")


def test_preset_audio_is_24khz(dirs):
    store = new_store(dirs)
    samples = store.load_audio("chadwick")
    assert samples.dtype == np.float32
    assert len(samples) == pytest.approx(store.get("chadwick").duration * SAMPLE_RATE, abs=1)


def test_upload_survives_a_restart(dirs):
    audio = tone(2.0)
    added = new_store(dirs).add_upload("my-voice_1", audio, "  warm  ", "  Hello.  ")

    restarted = new_store(dirs)
    voice = restarted.get("my-voice_1")

    assert voice == added
    assert (voice.description, voice.transcript, voice.kind) == ("warm", "Hello.", "uploaded")
    assert voice.duration == 2.0
    assert voice.created and voice.created.endswith("+00:00")
    assert voice.audio_path == dirs[1] / "my-voice_1" / "audio.wav"
    np.testing.assert_allclose(restarted.load_audio("my-voice_1"), audio, atol=1 / 32768)
    assert "my-voice_1" in restarted.names()


def test_upload_without_description_or_transcript(dirs):
    voice = new_store(dirs).add_upload("plain", tone(), None, "   ")
    assert (voice.description, voice.transcript) == ("", None)


@pytest.mark.parametrize("name", ["en_man", "mabel"])
def test_preset_names_are_taken_even_when_not_installed(dirs, name):
    with pytest.raises(VoiceExists, match=f"'{name}' already exists"):
        new_store(dirs).add_upload(name, tone(), None, None)


def test_duplicate_upload(dirs):
    store = new_store(dirs)
    store.add_upload("twice", tone(1.0), "first", None)
    with pytest.raises(VoiceExists):
        store.add_upload("twice", tone(2.0), "second", None)
    with pytest.raises(VoiceExists):
        new_store(dirs).add_upload("twice", tone(2.0), "second", None)
    assert store.get("twice").description == "first"


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65, "héllo", ".hidden", "name\n", "a b"])
def test_invalid_names(dirs, name):
    store = new_store(dirs)
    with pytest.raises(InvalidVoiceName, match="1 to 64 characters"):
        store.add_upload(name, tone(), None, None)
    assert list(dirs[1].iterdir()) == []
    assert not (dirs[1].parent / "x").exists()


def test_longest_valid_name(dirs):
    name = "x" * 64
    assert new_store(dirs).add_upload(name, tone(), None, None).name == name


def test_voice_not_found_message(dirs):
    store = new_store(dirs)
    store.add_upload("mine", tone(), None, None)
    with pytest.raises(VoiceNotFound) as info:
        store.get("unknown_voice")
    assert str(info.value) == (
        "Reference voice 'unknown_voice' not found. Available voices: ['belinda', 'chadwick', 'en_man', 'mine']"
    )
    assert info.value.available == ["belinda", "chadwick", "en_man", "mine"]


@pytest.mark.parametrize("name", ["../presets/en_man", "..", ".tmp-leftover", ""])
def test_get_never_leaves_the_uploads_directory(dirs, name):
    with pytest.raises(VoiceNotFound):
        new_store(dirs).get(name)


def make_leftover(uploads_dir, name, age_seconds):
    leftover = uploads_dir / name
    leftover.mkdir(parents=True)
    (leftover / "audio.wav").write_bytes(b"half")
    (leftover / "meta.json").write_text(json.dumps({"name": "half"}))
    old = time.time() - age_seconds
    os.utime(leftover, (old, old))
    return leftover


def test_leftover_temporary_directories(dirs):
    _, uploads = dirs
    stale = make_leftover(uploads, ".tmp-stale", age_seconds=3600)
    fresh = make_leftover(uploads, ".tmp-fresh", age_seconds=0)

    store = new_store(dirs)

    assert not stale.exists()
    assert fresh.exists()  # possibly another process's upload in progress
    assert [voice.kind for voice in store.list()] == ["preset"] * 3


def test_directory_without_metadata_is_not_a_voice(dirs):
    _, uploads = dirs
    (uploads / "broken").mkdir(parents=True)
    store = new_store(dirs)
    assert "broken" not in store.names()


class CountingEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert audio.dtype == np.float32 and audio.ndim == 1
        return np.arange(8 * 10, dtype=np.int64).reshape(8, 10) + self.calls


@pytest.mark.parametrize("name", ["en_man", "uploaded"])
def test_cached_codes(dirs, name):
    store = new_store(dirs)
    store.add_upload("uploaded", tone(), None, None)
    encode = CountingEncoder()

    first = store.cached_codes(name, "tokenizer-a", encode)
    again = store.cached_codes(name, "tokenizer-a", encode)
    after_restart = new_store(dirs).cached_codes(name, "tokenizer-a", encode)
    assert encode.calls == 1
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, after_restart)
    assert after_restart.dtype == np.int64 and not after_restart.flags.writeable

    other = store.cached_codes(name, "tokenizer-b/v2", encode)
    assert encode.calls == 2
    assert not np.array_equal(first, other)


def test_requests_arriving_together_for_a_new_voice_encode_it_once(dirs):
    store = new_store(dirs)
    store.add_upload("uploaded", tone(), None, None)
    encode = CountingEncoder()

    def slow_encode(audio):
        time.sleep(0.2)
        return encode(audio)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.cached_codes("uploaded", "tok", slow_encode), range(4)))
    assert encode.calls == 1
    assert all(result is results[0] for result in results)


def test_codes_are_stored_beside_the_voice(dirs):
    presets, uploads = dirs
    store = new_store(dirs)
    store.add_upload("uploaded", tone(), None, None)
    store.cached_codes("uploaded", "tok", CountingEncoder())
    store.cached_codes("en_man", "tok", CountingEncoder())
    assert len(list((uploads / "uploaded").glob("codes-*.npy"))) == 1
    assert len(list((presets / ".codes").glob("en_man-*.npy"))) == 1
    assert [voice.name for voice in store.list() if voice.kind == "uploaded"] == ["uploaded"]


def test_damaged_codes_file_is_recomputed(dirs):
    presets, _ = dirs
    encode = CountingEncoder()
    new_store(dirs).cached_codes("en_man", "tok", encode)
    (codes_file,) = (presets / ".codes").glob("*.npy")
    codes_file.write_bytes(b"garbage")
    new_store(dirs).cached_codes("en_man", "tok", encode)
    assert encode.calls == 2


def test_cached_codes_for_an_unknown_voice(dirs):
    encode = CountingEncoder()
    with pytest.raises(VoiceNotFound):
        new_store(dirs).cached_codes("nobody", "tok", encode)
    assert encode.calls == 0


def test_a_voice_replaced_by_another_store_is_encoded_afresh(dirs):
    """Two servers on one data directory: codes follow the audio, not the name."""
    here, there = new_store(dirs), new_store(dirs)
    here.add_upload("shared", tone(), None, None)
    encoded = []

    def encode(audio):
        encoded.append(audio)
        return np.full((8, 4), len(encoded), dtype=np.int64)

    old = here.cached_codes("shared", "tok", encode)
    there.delete("shared")
    with pytest.raises(VoiceNotFound):
        here.cached_codes("shared", "tok", encode)
    there.add_upload("shared", tone(2.0), None, None)
    new = here.cached_codes("shared", "tok", encode)
    assert len(encoded) == 2 and len(encoded[1]) == 2 * SAMPLE_RATE
    assert not np.array_equal(old, new)


def test_the_same_audio_under_two_names_is_encoded_once(dirs):
    store = new_store(dirs)
    store.add_upload("first", tone(), None, None)
    store.add_upload("second", tone(), None, None)
    encode = CountingEncoder()
    store.cached_codes("first", "tok", encode)
    store.cached_codes("second", "tok", encode)
    assert encode.calls == 1


def test_codes_in_memory_are_bounded(dirs, monkeypatch):
    monkeypatch.setattr("higgs_runtime.voices.MAX_CACHED_CODES", 2)
    store = new_store(dirs)
    encode = CountingEncoder()
    for name in ("en_man", "belinda", "chadwick"):
        store.cached_codes(name, "tok", encode)
    assert len(store._codes) == 2
    store.cached_codes("en_man", "tok", encode)  # evicted from memory, read back from disk
    assert encode.calls == 3


def test_a_voice_deleted_while_it_is_encoded_leaves_its_name_free(dirs):
    here, there = new_store(dirs), new_store(dirs)
    here.add_upload("brief", tone(), None, None)

    def encode_while_deleted(audio):
        there.delete("brief")
        return np.zeros((8, 4), dtype=np.int64)

    here.cached_codes("brief", "tok", encode_while_deleted)
    assert not (dirs[1] / "brief").exists()
    there.add_upload("brief", tone(2.0), None, None)
    assert here.get("brief").duration == 2.0
