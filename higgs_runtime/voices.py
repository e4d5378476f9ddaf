"""Reference voices: the preset catalog (audio fetched and checksum-verified) and voices uploaded by users.

Command line: `python -m higgs_runtime.voices fetch [--source DIR_OR_URL] [--dest DIR]`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import sys
import threading
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from higgs_runtime.audio import decode_audio, duration_seconds, encode_wav
from higgs_runtime.config import Settings

CATALOG_PATH = Path(__file__).resolve().parents[1] / "voice_prompts" / "catalog.json"
MAX_VOICE_NAME_CHARS = 64
VOICE_NAME_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_VOICE_NAME_CHARS}}}")
FETCH_TIMEOUT_S = 30
OK = "ok"
ALREADY_PRESENT = "already present"
AUDIO_FILE = "audio.wav"
META_FILE = "meta.json"
CODES_DIR = ".codes"
TEMP_PREFIX = ".tmp-"
# Another process sharing the uploads directory may be building a voice right now; only older
# leftovers are certainly abandoned.
STALE_TEMP_SECONDS = 600
# Stored voices were validated on the way in; these limits only guard against a damaged file.
STORED_MAX_SECONDS = 600.0
# Voices' codes kept in memory at most (a few tens of KiB each); the disk copy outlives eviction.
MAX_CACHED_CODES = 256

VoiceKind = Literal["preset", "uploaded"]
# The value of HIGGS_VOICE_ALIASES that turns aliases off.
NO_ALIASES = "none"


class VoiceError(Exception):
    """A voice request that cannot be served. The message is shown to API users as-is."""


class VoiceNotFound(VoiceError):
    def __init__(self, name: str, available: Sequence[str]):
        self.name = name
        self.available = list(available)
        super().__init__(f"Reference voice '{name}' not found. Available voices: {self.available}")


class VoiceExists(VoiceError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"A voice named '{name}' already exists; choose another name")


class PresetNotDeletable(VoiceError):
    def __init__(self, name: str):
        super().__init__(f"'{name}' is a preset voice and cannot be deleted; only uploaded voices can")


class InvalidVoiceName(VoiceError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(
            f"Invalid voice name {name[:MAX_VOICE_NAME_CHARS + 1]!r}: use 1 to {MAX_VOICE_NAME_CHARS} characters, "
            "each a letter A-Z or a-z, a digit, '_' or '-'"
        )


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    language: str
    transcript: str
    source_url: str
    sha256: str
    license_note: str


@dataclass(frozen=True)
class Voice:
    name: str
    description: str
    transcript: str | None
    kind: VoiceKind
    audio_path: Path
    duration: float
    created: str | None


def is_valid_voice_name(name: str) -> bool:
    return VOICE_NAME_PATTERN.fullmatch(name) is not None


def parse_voice_aliases(text: str) -> dict[str, str]:
    """`alias=voice,alias=voice` (HIGGS_VOICE_ALIASES) -> {alias: voice}; `none` gives no aliases."""
    if text.strip().lower() == NO_ALIASES:
        return {}
    aliases = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        alias, _, voice = (side.strip() for side in pair.partition("="))
        if not (is_valid_voice_name(alias) and is_valid_voice_name(voice)):
            raise ValueError(f"HIGGS_VOICE_ALIASES: {pair!r} is not alias=voice with two valid voice names")
        aliases[alias] = voice
    return aliases


def load_catalog(path: Path = CATALOG_PATH) -> list[CatalogEntry]:
    entries = [CatalogEntry(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))["voices"]]
    for entry in entries:
        if not is_valid_voice_name(entry.name):
            raise ValueError(f"{path}: invalid voice name {entry.name!r}")
    return entries


def fetch_presets(catalog: Sequence[CatalogEntry], source: str, dest_dir: Path) -> dict[str, str]:
    """Install each preset's NAME.wav from `source` (a directory or an http(s) URL prefix) into dest_dir.

    Returns name -> "ok", "already present" or a message saying why that voice failed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    return {entry.name: _fetch_one(entry, source, dest_dir) for entry in catalog}


def _fetch_one(entry: CatalogEntry, source: str, dest_dir: Path) -> str:
    target = dest_dir / f"{entry.name}.wav"
    if target.is_file() and _sha256_file(target) == entry.sha256:
        return ALREADY_PRESENT
    try:
        data = _read_source(source, entry.name)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"failed: {exc}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        return f"failed: checksum mismatch (expected {entry.sha256}, got {digest})"
    try:
        _write_atomic(target, data)
    except OSError as exc:
        return f"failed: could not write {target}: {exc}"
    return OK


def _read_source(source: str, name: str) -> bytes:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(f"{source.rstrip('/')}/{name}.wav", timeout=FETCH_TIMEOUT_S) as response:
            return response.read()
    return (Path(source).expanduser() / f"{name}.wav").read_bytes()


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _write_atomic(target: Path, data: bytes) -> None:
    temp_path = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    try:
        _write_file(temp_path, data)
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _load_npy(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # missing or damaged: the caller recomputes and overwrites it
        return None


def _remove_stale_temp_dirs(directory: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in directory.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


class VoiceStore:
    """Preset voices whose audio is installed and verified, plus uploaded voices kept on disk.

    Each uploaded voice is a directory `uploads_dir/NAME` holding audio.wav and meta.json; it appears
    in one atomic rename, so a crash never leaves half a voice. Servers sharing the directories see
    each other's uploads and deletes at once: uploads are read from disk on every lookup, and audio
    codes are keyed by the audio's content, so a name deleted and reused elsewhere never brings back
    the old voice's codes.
    """

    def __init__(self, catalog_path: Path, presets_dir: Path, uploads_dir: Path, aliases: dict[str, str] | None = None):
        """`aliases`: other names for voices (OpenAI's stock voice names, say); a voice of the alias's
        own name wins over it, and a preset's name cannot be an alias."""
        self._catalog = {entry.name: entry for entry in load_catalog(catalog_path)}
        self._aliases = dict(aliases or {})
        if clash := sorted(set(self._aliases) & set(self._catalog)):
            raise ValueError(f"HIGGS_VOICE_ALIASES: {clash} are preset voices' own names, not aliases")
        self._presets_dir = presets_dir
        self._uploads_dir = uploads_dir
        self._lock = threading.Lock()
        self._codes: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # (audio sha256, codec id)
        self._encoding: dict[tuple[str, str], threading.Lock] = {}  # one encode per audio at a time
        uploads_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_dirs(uploads_dir)
        self._presets = self._installed_presets()

    def refresh(self) -> None:
        """Looks again for installed presets (after a fetch)."""
        presets = self._installed_presets()
        with self._lock:
            self._presets = presets

    def check_new_name(self, name: str) -> None:
        """Raises unless `name` is a valid name that no voice (preset or uploaded) has."""
        if not is_valid_voice_name(name):
            raise InvalidVoiceName(name)
        if name in self._catalog or (self._uploads_dir / name).exists():
            raise VoiceExists(name)

    def list(self) -> list[Voice]:
        """Installed presets in catalog order, then uploaded voices sorted by name."""
        with self._lock:
            return [*self._presets.values(), *self._uploads()]

    def names(self) -> list[str]:
        return [voice.name for voice in self.list()]

    def get(self, name: str) -> Voice:
        with self._lock:
            voice = self._presets.get(name) or self._find_upload(name)
        if voice is None:
            raise VoiceNotFound(name, self.names())
        return voice

    def resolve(self, name: str) -> Voice:
        """The voice a request names: a voice of that name, else the voice an alias stands for."""
        with self._lock:
            voice = self._presets.get(name) or self._find_upload(name)
        if voice is None and name in self._aliases:
            return self.get(self._aliases[name])
        if voice is None:
            raise VoiceNotFound(name, self.names())
        return voice

    def aliases(self) -> dict[str, str]:
        """Alias -> voice, for the aliases in effect: no voice has the alias's name, and its voice exists."""
        names = set(self.names())
        return {alias: voice for alias, voice in self._aliases.items() if alias not in names and voice in names}

    def audio_file(self, name: str) -> bytes:
        """The voice's reference audio as stored (a WAV file), read whole: a snapshot that a delete
        racing the read cannot cut short (the voice is then not found)."""
        try:
            return self.get(name).audio_path.read_bytes()
        except FileNotFoundError:
            raise VoiceNotFound(name, self.names()) from None

    def load_audio(self, name: str) -> np.ndarray:
        """The voice's reference audio: mono float32 at audio.SAMPLE_RATE."""
        return decode_audio(self.audio_file(name), min_seconds=0.0, max_seconds=STORED_MAX_SECONDS)

    def add_upload(
        self, name: str, audio: np.ndarray, description: str | None, transcript: str | None
    ) -> Voice:
        """Store a new voice; `audio` is mono float32 at audio.SAMPLE_RATE."""
        with self._lock:
            self.check_new_name(name)
            voice = Voice(
                name=name,
                description=(description or "").strip(),
                transcript=(transcript or "").strip() or None,
                kind="uploaded",
                audio_path=self._uploads_dir / name / AUDIO_FILE,
                duration=duration_seconds(audio),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            self._write_upload(voice, encode_wav(audio))
        return voice

    def delete(self, name: str) -> None:
        """Removes an uploaded voice (presets cannot be deleted) in one rename, then cleans up."""
        voice = self.get(name)
        if voice.kind != "uploaded":
            raise PresetNotDeletable(name)
        graveyard = self._uploads_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        with self._lock:
            try:
                os.rename(self._uploads_dir / name, graveyard)
            except FileNotFoundError:  # deleted meanwhile by another worker
                raise VoiceNotFound(name, []) from None
        shutil.rmtree(graveyard, ignore_errors=True)

    def cached_codes(self, name: str, codec_id: str, encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The voice's audio codes for the tokenizer `codec_id`, encoded once and kept in memory and on disk.

        The codes are keyed by the audio's sha256 and the codec, computed from the very bytes that are
        encoded on a miss. The returned array is read-only because it is shared between callers.
        """
        voice = self.get(name)
        try:
            data = voice.audio_path.read_bytes()
        except FileNotFoundError:  # deleted by another server since the lookup
            raise VoiceNotFound(name, self.names()) from None
        key = (hashlib.sha256(data).hexdigest(), codec_id)
        with self._lock:
            encoding = self._encoding.setdefault(key, threading.Lock())
        try:
            with encoding:  # requests arriving together for a new voice wait for one encode
                return self._codes_for(voice, key, data, encode)
        finally:
            with self._lock:
                if self._encoding.get(key) is encoding:
                    del self._encoding[key]

    def _codes_for(self, voice: Voice, key: tuple[str, str], data: bytes,
                   encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        with self._lock:
            if (codes := self._codes.get(key)) is not None:
                self._codes.move_to_end(key)
                return codes
        path = self._codes_path(voice, key)
        codes = _load_npy(path)
        if codes is None:
            codes = np.asarray(encode(decode_audio(data, min_seconds=0.0, max_seconds=STORED_MAX_SECONDS)))
            if voice.kind == "preset":
                path.parent.mkdir(parents=True, exist_ok=True)
            # An upload deleted meanwhile keeps no codes; recreating its directory would block its name.
            with contextlib.suppress(FileNotFoundError):
                _write_atomic(path, _npy_bytes(codes))
        codes.flags.writeable = False
        with self._lock:
            self._codes[key] = codes
            if len(self._codes) > MAX_CACHED_CODES:
                self._codes.popitem(last=False)
        return codes

    def _installed_presets(self) -> dict[str, Voice]:
        presets = {}
        for entry in self._catalog.values():
            path = self._presets_dir / f"{entry.name}.wav"
            if path.is_file() and _sha256_file(path) == entry.sha256:
                presets[entry.name] = Voice(
                    name=entry.name,
                    description=entry.description,
                    transcript=entry.transcript,
                    kind="preset",
                    audio_path=path,
                    duration=sf.info(str(path)).duration,
                    created=None,
                )
        return presets

    def _uploads(self) -> list[Voice]:
        # Temporary directories (".tmp-...") never match a voice name, so they are skipped here.
        names = sorted(path.name for path in self._uploads_dir.iterdir() if path.is_dir())
        voices = (self._find_upload(name) for name in names)
        return [voice for voice in voices if voice is not None]

    def _find_upload(self, name: str) -> Voice | None:
        # Validating the name first keeps every path inside uploads_dir.
        if not is_valid_voice_name(name) or name in self._catalog:
            return None
        directory = self._uploads_dir / name
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            return Voice(
                name=name,
                description=meta["description"],
                transcript=meta["transcript"],
                kind="uploaded",
                audio_path=directory / AUDIO_FILE,
                duration=float(meta["duration"]),
                created=meta["created"],
            )
        except (OSError, ValueError, KeyError):
            return None

    def _write_upload(self, voice: Voice, wav: bytes) -> None:
        staging = self._uploads_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        meta = {
            "name": voice.name,
            "description": voice.description,
            "transcript": voice.transcript,
            "duration": voice.duration,
            "created": voice.created,
        }
        try:
            _write_file(staging / AUDIO_FILE, wav)
            _write_file(staging / META_FILE, json.dumps(meta, ensure_ascii=False, indent=2).encode("utf-8"))
            os.rename(staging, self._uploads_dir / voice.name)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            # Another process sharing uploads_dir won the race for this name.
            if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VoiceExists(voice.name) from exc
            raise

    def _codes_path(self, voice: Voice, key: tuple[str, str]) -> Path:
        """Beside an upload (deleted with it), or in the presets' codes directory."""
        audio_sha, codec_id = key
        file_name = f"codes-{audio_sha[:32]}-{hashlib.sha1(codec_id.encode('utf-8')).hexdigest()}.npy"
        if voice.kind == "uploaded":
            return voice.audio_path.parent / file_name
        return self._presets_dir / CODES_DIR / f"{voice.name}-{file_name}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m higgs_runtime.voices", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="install the preset voices' audio, verifying each checksum")
    fetch.add_argument(
        "--source",
        help="a directory holding NAME.wav files, or an http(s) URL prefix (default: HIGGS_VOICE_SOURCE, "
        "else the upstream repository at the pinned commit)",
    )
    fetch.add_argument("--dest", type=Path, help="where to install them (default: the service's presets directory)")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    results = fetch_presets(load_catalog(), args.source or settings.voice_source, args.dest or settings.presets_dir)
    for name, status in results.items():
        print(f"{name}: {status}")
    return 0 if all(status in (OK, ALREADY_PRESENT) for status in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
