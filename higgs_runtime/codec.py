"""Audio <-> codes through the audio tokenizer (24 kHz, 25 frames/s, 8 codebooks)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .engine.delay_pattern import undo_delay_pattern


class Codec:
    def __init__(self, model, device: torch.device):
        self.model = model
        self.device = device
        self.codebook_size = model.config.codebook_size
        self.samples_per_frame = model.config.hop_length
        # One codec call at a time: concurrent calls would only fight over the same cores.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, samples: np.ndarray) -> np.ndarray:
        """24 kHz mono float32 -> codes (codebooks, frames)."""
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)[None, None]
        with self._lock:
            codes = self.model.encode(audio).audio_codes
        return codes[0].cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes (codebooks, frames) -> 24 kHz mono float32."""
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        tensor = torch.from_numpy(codes).to(self.device)[None]
        with self._lock:
            audio = self.model.decode(tensor).audio_values
        return audio[0, 0].float().cpu().numpy()

    def decode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Generated (delay-patterned) frames -> 24 kHz mono float32."""
        return self.decode(undo_delay_pattern(frames, self.codebook_size))
