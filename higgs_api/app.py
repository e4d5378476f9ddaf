"""The FastAPI app BentoML mounts at `/`: every route that is not a BentoML API method, our error
answers for them, and which paths are open (no API key), generate (refused while draining) or take JSON."""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from higgs_runtime import __version__

from . import api_docs, openai, playground, realtime, rest, voices
from .errors import ApiError, error_body, validation_error

# BentoML's probes, its schema (its client reads it first: a 401 there would hide the real error), the
# pages and their files.
OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/schema.json", *playground.PUBLIC_PATHS,
                        *api_docs.PUBLIC_PATHS})
JSON_PATHS = frozenset({"/generate", "/generate/voice-clone", "/generate/multi-speaker", "/v1/audio/speech"})
GENERATION_PATHS = JSON_PATHS | {realtime.LIVE_PATH}


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.detail, exc.param), exc.status)


def route_paths(routes) -> list[str]:
    """The path templates of `routes`, through included routers (no prefixes: ours have none)."""
    paths = []
    for route in routes:
        if isinstance(getattr(route, "path", None), str):
            paths.append(route.path)
        elif hasattr(route, "original_router"):
            paths += route_paths(route.original_router.routes)
    return paths


def create_app(bentoml_spec: Callable[[], dict]) -> FastAPI:
    """`bentoml_spec()`: BentoML's OpenAPI document of the whole service, for the API reference."""
    app = FastAPI(title=api_docs.TITLE, version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for router in (rest.router, voices.router, openai.router, realtime.router):
        app.include_router(router)
    playground.add_routes(app)
    api_docs.add_routes(app, bentoml_spec)
    return app
