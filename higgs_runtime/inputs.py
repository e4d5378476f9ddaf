"""Checks on user-supplied fields, run before any work proportional to them: every text is bounded in
characters and every list in length. Each raises `InvalidRequest` naming the field."""

from __future__ import annotations

from .speech import InvalidRequest
from .voices import MAX_VOICE_NAME_CHARS


def present(value: str | None) -> str | None:
    """The value stripped, None when absent or blank: for fields bounded otherwise (base64 audio, by
    the request body's limit and the clip's duration)."""
    return value.strip() or None if value is not None else None


def optional_text(field: str, value: str | None, limit: int) -> str | None:
    """The text stripped, None when absent or blank."""
    text = present(value)
    if text is not None and len(text) > limit:
        raise InvalidRequest(f"{field} is {len(text)} characters long; the limit is {limit}")
    return text


def required_text(field: str, value: str, limit: int) -> str:
    text = optional_text(field, value, limit)
    if text is None:
        raise InvalidRequest(f"{field} must not be empty")
    return text


def voice_name(field: str, value: str | None) -> str | None:
    return optional_text(field, value, MAX_VOICE_NAME_CHARS)


def voice_names(field: str, values: list[str], limit: int) -> list[str]:
    if len(values) > limit:
        raise InvalidRequest(f"{field} has {len(values)} entries; the limit is {limit}")
    return [required_text(f"{field}[{index}]", value, MAX_VOICE_NAME_CHARS) for index, value in enumerate(values)]
