"""The web playground: a static page (HTML, CSS, ES modules) shipped beside this file, served at `/`
and `/playground`. It talks only to the server's own API, so it works offline."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from starlette.responses import FileResponse

STATIC_DIR = Path(__file__).parent
PAGE_PATHS = ("/", "/playground")
MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
FILES = frozenset(path.name for path in STATIC_DIR.iterdir() if path.suffix in MEDIA_TYPES)
# The page and its files load without an API key; the page then sends the key the user typed.
PUBLIC_PATHS = frozenset({*PAGE_PATHS, *(f"/playground/{name}" for name in FILES)})


def _file(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=MEDIA_TYPES[Path(name).suffix],
                        headers={"Cache-Control": "no-cache"})


def add_routes(app: FastAPI) -> None:
    """`GET /` replaces BentoML's default page (which loads scripts from outside the server)."""
    for path in PAGE_PATHS:
        app.add_api_route(path, lambda: _file("index.html"), methods=["GET"], include_in_schema=False)

    @app.get("/playground/{name}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        if name not in FILES:
            raise HTTPException(404, f"no playground file named {name!r}")
        return _file(name)
