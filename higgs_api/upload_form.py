"""The multipart form of POST /upload-voice, parsed here instead of by BentoML's own parser.

BentoML's parser JSON-decodes every text field (`name=1e3` arrives as 1000.0, `name=null` as None),
fetches a text field named like a file field as a URL, and has no bound on parts or file names. Here
the body is parsed by starlette's multipart parser with tight bounds; text fields stay the strings
sent, and a file is only ever a file part. Mistakes are refused with a 4xx before anything is stored.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

TEXT_FIELDS = ("name", "description", "transcript")
# Well below the 255-byte file-name limit of common file systems (BentoML keeps the upload in a
# temporary file named after it).
MAX_FILENAME_BYTES = 200
MAX_TEXT_PART_BYTES = 1024 * 1024
# BentoML's own client JSON-encodes every text field it sends (None as `null`).
BENTOML_CLIENT_AGENT = "BentoML HTTP Client/"


class VoiceUploadForm(bentoml.IODescriptor):
    """`file`, and `name` (the file name's stem unless given), `description`, `transcript`."""

    file: Path
    name: str | None = None
    description: str | None = None
    transcript: str | None = None

    @classmethod
    async def from_http_request(cls, request: Request, serde) -> "VoiceUploadForm":
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            raise BentoMLException("send the voice as multipart/form-data (a file part named 'file')",
                                   error_code=HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=len(TEXT_FIELDS),
                                 max_part_size=MAX_TEXT_PART_BYTES)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise InvalidArgument(f"invalid multipart body: {exc.message}") from None
        try:
            return cls.model_validate(_fields(form, json_encoded=request.headers.get("user-agent", "").startswith(
                BENTOML_CLIENT_AGENT)))
        finally:
            await form.close()


def _fields(form: FormData, json_encoded: bool) -> dict:
    names = list(form.keys())
    unknown = sorted(set(names) - {"file", *TEXT_FIELDS})
    if unknown:
        raise InvalidArgument(f"unknown form field(s) {unknown}; the fields are 'file', " +
                              ", ".join(f"'{name}'" for name in TEXT_FIELDS))
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise InvalidArgument("'file' must be a file part (a WAV, MP3 or FLAC upload), not a text field")
    filename = file.filename or ""
    if len(filename.encode()) > MAX_FILENAME_BYTES or not filename.isprintable():
        raise InvalidArgument(f"the file name must be printable and at most {MAX_FILENAME_BYTES} bytes long")
    fields: dict = {"file": file}
    for name in TEXT_FIELDS:
        values = form.getlist(name)
        if len(values) > 1:
            raise InvalidArgument(f"form field '{name}' is given {len(values)} times")
        if values:
            if not isinstance(values[0], str):
                raise InvalidArgument(f"form field '{name}' must be text, not a file")
            fields[name] = _decoded(name, values[0]) if json_encoded else values[0]
    if not (fields.get("name") or "").strip():
        fields["name"] = Path(filename).stem
    return fields


def _decoded(name: str, raw: str) -> str | None:
    """A text field from BentoML's client: a JSON string, or null for None. Nothing else is decoded."""
    if raw == "null":
        return None
    try:
        value = json.loads(raw) if raw.startswith('"') else None
    except ValueError:
        value = None
    if not isinstance(value, str):
        raise InvalidArgument(f"form field '{name}' from the BentoML client must be a JSON string")
    return value
