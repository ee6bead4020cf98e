"""The dashboard page the hub serves at /dashboard.

The page and its assets are static files in api/static/ (plain JavaScript modules, no build step,
nothing fetched from elsewhere). The page itself needs no token: the person pastes one, the page
keeps it in sessionStorage (this tab, until it closes) and sends it only in the Authorization
header, also for the event stream, so it never appears in a URL, a log or the browser's history.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC = Path(__file__).parent / "static"

# Only these files are served: a fixed table, so no request path ever reaches the filesystem.
ASSETS: dict[str, str] = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "jobs.js": "text/javascript; charset=utf-8",
    "machines.js": "text/javascript; charset=utf-8",
    "spawn.js": "text/javascript; charset=utf-8",
    "folders.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {
    **HEADERS,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


async def slash(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=308)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        return JSONResponse({"error": "Not found"}, status_code=404)
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)


routes: list[BaseRoute] = [
    Route("/dashboard", page, methods=["GET", "HEAD"]),
    Route("/dashboard/", slash, methods=["GET", "HEAD"]),
    Route("/dashboard/static/{name}", asset, methods=["GET", "HEAD"]),
]
