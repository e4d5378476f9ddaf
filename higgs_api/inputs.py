"""Checks on user-supplied fields, run before any work proportional to them: every text is bounded in
characters and every list in length. Each raises a 400 `ApiError` naming the field (`param`).

Every text field loses the private-use marks that stand for sound-event tags (`text_normalize`): only
the normaliser writes those, so no field can smuggle a tag token into a prompt."""

from __future__ import annotations

from higgs_runtime.speech import DescribedVoice
from higgs_runtime.text_normalize import without_marks
from higgs_runtime.voices import MAX_VOICE_NAME_CHARS

from .errors import ApiError
from .schemas import VoiceDescription


def present(value: str | None) -> str | None:
    """The value stripped, None when absent or blank: for fields bounded otherwise (base64 audio, by
    the request body's limit and the clip's duration)."""
    return value.strip() or None if value is not None else None


def optional_text(field: str, value: str | None, limit: int) -> str | None:
    """The text stripped and without sound-event marks, None when absent or blank."""
    text = present(value)
    if text is None:
        return None
    if len(text) > limit:
        raise ApiError(400, f"{field} is {len(text)} characters long; the limit is {limit}", field)
    return present(without_marks(text))


def required_text(field: str, value: str | None, limit: int) -> str:
    text = optional_text(field, value, limit)
    if text is None:
        raise ApiError(400, f"{field} must not be empty", field)
    return text


def voice_name(field: str, value: str | None) -> str | None:
    return optional_text(field, value, MAX_VOICE_NAME_CHARS)


def speaker_voices(field: str, values: list[str | VoiceDescription], limit: int,
                   description_limit: int) -> list[str | DescribedVoice]:
    """One voice per speaker: a voice name, or a description in words."""
    if len(values) > limit:
        raise ApiError(400, f"{field} has {len(values)} entries; the limit is {limit}", field)
    return [required_text(f"{field}[{index}]", value, MAX_VOICE_NAME_CHARS) if isinstance(value, str) else
            DescribedVoice(required_text(f"{field}[{index}].description", value.description, description_limit))
            for index, value in enumerate(values)]
