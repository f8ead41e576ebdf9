"""``/ui``: one self-contained page (no external assets: the machine may be offline).

The page holds no data; its script reads the API with the key the user gives
it (or ``#key=...`` in the URL), so it needs no key itself.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ui"])

_PAGE = files("gateway.ui").joinpath("index.html")


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
async def ui() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"))
