"""Audio <-> codes through the audio tokenizer (24 kHz, 25 frames/s, 8 codebooks)."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import threading

import numpy as np
import torch

from .device_threads import prepare_helper_thread


class Codec:
    def __init__(self, model, device: torch.device):
        self.model = model
        self.device = device
        self.codebook_size = model.config.codebook_size
        self.samples_per_frame = model.config.hop_length
        # One encode and one decode at a time: more would only fight over the same cores. Apart,
        # because encoding a long reference clip takes as long as decoding seconds of audio for dozens
        # of streams, and the streams must not wait for it (encoder and decoder share no state).
        # Encodes run on one thread of their own, whichever request thread asks: torch keeps native
        # state per calling thread (an OpenMP team, oneDNN's buffers for each new clip length), which
        # grew the worker's memory with every thread that had ever encoded a clip.
        self._encoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="codec-encode")
        self._decode_lock = threading.Lock()

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """24 kHz mono float32 -> codes (codebooks, frames)."""
        return self._encoder.submit(self._encode_here, samples).result()

    @torch.inference_mode()
    def _encode_here(self, samples: np.ndarray) -> np.ndarray:
        prepare_helper_thread(self.device)
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)[None, None]
        codes = self.model.encode(audio).audio_codes
        return codes[0].cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes (codebooks, frames) -> 24 kHz mono float32."""
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        prepare_helper_thread(self.device)
        tensor = torch.from_numpy(self._playable(codes)).to(self.device)[None]
        with self._decode_lock:
            audio = self.model.decode(tensor).audio_values
        return audio[0, 0].float().cpu().numpy()

    def _playable(self, codes: np.ndarray) -> np.ndarray:
        """Generated codes may hold a stream marker (beyond the codebook) where the model emitted one:
        played as the nearest real code, as the reference implementation does."""
        return np.clip(codes, 0, self.codebook_size - 1)

    @torch.inference_mode()
    def decode_batch(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Several code clips (codebooks, frames_i) in one call: padded on the right with each clip's
        last frame, decoded together, each cut back to its own length. The samples near a padded
        end differ from a lone decode's, so callers pad only clips whose tail they discard. Clips
        must not be empty."""
        longest = max(clip.shape[1] for clip in clips)
        padded = np.stack([np.pad(clip, ((0, 0), (0, longest - clip.shape[1])), mode="edge") for clip in clips])
        prepare_helper_thread(self.device)
        tensor = torch.from_numpy(self._playable(padded))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        with self._decode_lock:
            audio = self.model.decode(tensor.to(self.device, non_blocking=True)).audio_values[:, 0].float()
        audio = audio.cpu().numpy()
        return [audio[index, :clip.shape[1] * self.samples_per_frame] for index, clip in enumerate(clips)]



class ClipCodes:
    """Codes of one-off reference clips, by the clip's content: a client that sends the same clip again
    (a voice it keeps on its side) is not encoded again. Bounded; least recently used clips leave."""

    def __init__(self, codec: Codec, max_clips: int = 64):
        self._codec, self._max_clips = codec, max_clips
        self._codes: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Read-only codes (codebooks, frames) of 24 kHz mono float32 samples."""
        key = hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).digest()
        with self._lock:
            if key in self._codes:
                self._codes.move_to_end(key)
                return self._codes[key]
        codes = self._codec.encode(samples)
        codes.flags.writeable = False
        with self._lock:
            self._codes[key] = codes
            while len(self._codes) > self._max_clips:
                self._codes.popitem(last=False)
        return codes
