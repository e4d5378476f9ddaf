"""One worker's runtime objects, as the routes see them: settings, metrics, the voice store, and the
model's synthesizer once the background load has finished."""

from __future__ import annotations

import logging
import threading
import time

import bentoml

from higgs_runtime.config import Settings
from higgs_runtime.loading import BackgroundLoader
from higgs_runtime.metrics import ServiceMetrics
from higgs_runtime.speech import Speech, Synthesizer
from higgs_runtime.voices import CATALOG_PATH, VoiceStore, fetch_presets, load_catalog, parse_voice_aliases

from .errors import ApiError
from .middleware import ApiKeys

log = logging.getLogger("higgs_audio.state")


class ServerState:
    def __init__(self, settings: Settings, api_keys: ApiKeys):
        self.settings = settings
        self.api_keys = api_keys
        self.live_sessions = 0  # WebSocket sessions open on this worker
        self.started_at = int(time.time())
        # Prometheus' multiprocess directory exists only once a worker runs: metrics are made here, not at import.
        self.metrics = ServiceMetrics()
        self.voices = VoiceStore(CATALOG_PATH, settings.presets_dir, settings.uploads_dir,
                                 parse_voice_aliases(settings.voice_aliases))
        self.synthesizer: Synthesizer | None = None
        threading.Thread(target=self._fetch_missing_presets, name="preset-fetch", daemon=True).start()
        self.loader = BackgroundLoader(settings, self._on_model_ready)
        self.loader.start()

    def ready_synthesizer(self) -> Synthesizer:
        if self.loader.status == "failed":
            raise ApiError(503, f"the model failed to load: {self.loader.error}")
        if self.synthesizer is None:
            raise ApiError(503, "the model is still loading; retry in a moment (GET /health shows progress)")
        return self.synthesizer

    def observe(self, started: float, speech: Speech) -> None:
        self.metrics.observe_request(started, speech.first_audio_at, speech.audio_seconds, speech.finish_reason)

    def _fetch_missing_presets(self) -> None:
        results = fetch_presets(load_catalog(), self.settings.voice_source, self.settings.presets_dir)
        for name, outcome in results.items():
            if outcome not in ("ok", "already present"):
                log.warning("preset voice %s unavailable: %s", name, outcome)
        self.voices.refresh()

    def _on_model_ready(self, loaded) -> None:
        self.synthesizer = Synthesizer(loaded, self.voices, self.settings, on_load_change=self.metrics.observe_engine)


def server_state() -> ServerState:
    """The worker's state, for FastAPI routes (`Depends(server_state)`)."""
    return bentoml.get_current_service().state
