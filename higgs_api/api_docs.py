"""The API reference, offline: `GET /docs` is Swagger UI from assets shipped in the `fastapi-offline`
package (no CDN, so it works on an air-gapped host), over `GET /docs.json`, BentoML's OpenAPI
document of every route (its own API methods and our FastAPI routes) with our title, overview and
bearer-key scheme."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse, JSONResponse

from higgs_runtime import __version__

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
DOCS_PATH, SPEC_PATH, ASSETS_PATH = "/docs", "/docs.json", "/docs/assets"
# The reference needs no key: it describes the API, it does not use it.
PUBLIC_PATHS = frozenset({DOCS_PATH, SPEC_PATH, *(f"{ASSETS_PATH}/{name}" for name in ASSETS)})
TITLE = "Higgs Audio v2 server"
OVERVIEW = """Text to speech with Higgs Audio v2: expressive speech, zero-shot voice cloning and
multi-speaker dialogue.

- The original REST API: `POST /generate`, `/generate/voice-clone`, `/generate/multi-speaker` answer
  base64 audio in JSON; `/upload-voice` and `/voices*` manage voices.
- The OpenAI-compatible API under `/v1/`: `POST /v1/audio/speech` streams audio as it is produced
  (bytes or server-sent events), and the listings SDKs and voice pickers call.
- Live sessions for voice agents: `GET /v1/audio/speech/stream` is a WebSocket (OpenAPI cannot list
  it below). Send JSON text messages: `session.config` first (`voice`, or `ref_audio` + `ref_text`, or
  `voice_description`; `scene_prompt`, `temperature`, `top_p`, `top_k`, `seed`, `max_new_tokens`,
  `normalize_text`, `api_key`), then `input.text` (`text`), `input.flush`, `input.done`, and
  `response.cancel` to interrupt. The server answers `session.created`, then per sentence
  `segment.start`, binary frames of 16-bit PCM (24 kHz, mono) and `segment.done` (with `usage`),
  `response.cancelled`, `error` (`code`, `message`, `param`; the session goes on) and `session.done`.

Errors are `{"detail": ...}`, or OpenAI's `{"error": {"message", "type", "code", "param"}}` under
`/v1/`. With API keys configured, send `Authorization: Bearer <key>` (the Authorize button)."""


def add_routes(app: FastAPI, bentoml_spec: Callable[[], dict]) -> None:
    """`bentoml_spec()` gives BentoML's OpenAPI document of the service, as a dict."""

    @app.get(DOCS_PATH, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=SPEC_PATH, title=f"{TITLE}: API reference",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon.png")

    @app.get(f"{ASSETS_PATH}/{{name}}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            return JSONResponse({"detail": f"no documentation asset named {name!r}"}, 404)
        return FileResponse(ASSETS_DIR / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    @app.get(SPEC_PATH, include_in_schema=False)
    def spec() -> JSONResponse:
        return JSONResponse(ours(bentoml_spec()))


def ours(spec: dict) -> dict:
    """BentoML's document with our title, version and overview, and the bearer-key scheme."""
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http", "scheme": "bearer", "description": "Needed only when the server has API keys."}
    return {**spec, "info": {"title": TITLE, "version": __version__, "description": OVERVIEW},
            "security": [{"apiKey": []}, {}]}
