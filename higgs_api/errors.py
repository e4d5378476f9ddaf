"""How errors are answered: each exception the routes meet has its status, and every error body
has its route's shape (`{"detail"}` on the original API, OpenAI's `{"error": {...}}` under /v1/;
`middleware.ErrorContract` reshapes whatever the routes and BentoML answer).

A route raises `ApiError` for what it checks itself; the runtime's exceptions map to their status
here, so the runtime never speaks HTTP."""

from __future__ import annotations

import functools
import logging

from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from higgs_runtime.audio import AudioInputError
from higgs_runtime.engine.requests import QueueFull, RequestTooLarge
from higgs_runtime.speech import GenerationFailed, GenerationTimeout, InvalidRequest
from higgs_runtime.voices import VoiceError, VoiceExists

log = logging.getLogger("higgs_audio.errors")

OPENAI_PREFIX = "/v1/"
INTERNAL_ERROR = "internal server error; the server log has the details"


class ApiError(Exception):
    """An answer other than success; `param` names the request field at fault, if one is."""

    def __init__(self, status: int, detail: str, param: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.param = status, detail, param


class BodyRefused(Exception):
    """Raised to the app while a body streams in past its size or time limit; `request_guards.BodyGuard`
    answers it."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def status_for(exc: Exception) -> int | None:
    """The status of an exception the API expects; None for a fault (500, logged with its traceback)."""
    if isinstance(exc, (ApiError, BodyRefused)):
        return exc.status
    if isinstance(exc, VoiceExists):
        return 409
    if isinstance(exc, (InvalidRequest, AudioInputError, VoiceError, RequestTooLarge)):
        return 400
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, GenerationTimeout):
        return 504
    if isinstance(exc, GenerationFailed):
        return 500
    return None


def error_body(detail: str, param: str | None = None) -> dict:
    """What a route answers; `ErrorContract` turns it into the route's shape."""
    return {"detail": detail} if param is None else {"detail": detail, "param": param}


def error_response(exc: Exception, where: str, param: str | None = None) -> JSONResponse:
    """`param`: the field at fault when the exception does not name one itself (an unknown voice
    is a fault of the field that named it)."""
    status = status_for(exc)
    if status is None:
        log.exception("internal error in %s", where)
        return JSONResponse(error_body(INTERNAL_ERROR), 500)
    if status >= 500:
        log.error("%s failed: %s", where, exc)
    detail = getattr(exc, "detail", None) or str(exc)
    return JSONResponse(error_body(detail, getattr(exc, "param", None) or param), status)


def json_errors(route):
    """For BentoML's API methods: our errors become error bodies with their status; anything else is a
    logged 500."""

    @functools.wraps(route)
    async def wrapper(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except Exception as exc:
            return error_response(exc, route.__name__)

    return wrapper


def field_of(location: tuple) -> str | None:
    """The request field a validation error's location points at (`("body", "speed")` -> "speed")."""
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) or None


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's request validation, as our 400 naming the first field at fault."""
    errors = exc.errors()
    messages = []
    for error in errors:
        field = field_of(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            messages.append(f"request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
        elif error.get("type") == "extra_forbidden":
            messages.append(f"unknown field '{field}'")
        else:
            messages.append(f"{field}: {error['msg']}" if field else error["msg"])
    return JSONResponse(error_body("invalid request: " + "; ".join(messages), field_of(main_problem(errors)["loc"])), 400)


def main_problem(errors: list[dict]) -> dict:
    """The validation error to name: an unknown field first (a typo explains the missing field too)."""
    return next((error for error in errors if error.get("type") == "extra_forbidden"), errors[0])
