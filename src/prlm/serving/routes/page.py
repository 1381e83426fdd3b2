"""The web page: one static HTML file, its inline script and style allowed by the CSP's hashes."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


def load_page() -> str:
    """The page's HTML; read once per app, since the page's CSP (`middleware.page_csp`) hashes this text."""
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request):
    return HTMLResponse(request.app.state.page)
