"""API docs that work offline: Swagger UI 5 (it reads OpenAPI 3.1, which FastAPI writes) from
the installed `swagger-ui-py` package's static files, no CDN; the OpenAPI document, and the
bus's AsyncAPI document next to it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from services.gateway import asyncapi

ASSETS = "/docs-assets"


def swagger_ui_assets() -> Path:
    """The Swagger UI files the `swagger-ui-py` package ships (its `static` directory)."""
    import swagger_ui  # the package's top level imports only its own modules

    return Path(swagger_ui.__file__).parent / "static"


@lru_cache(maxsize=1)
def asyncapi_document() -> dict[str, Any]:
    return asyncapi.build()


def install(app: FastAPI) -> None:
    """Serve /docs (Swagger UI, its assets from this process) and /asyncapi.json.
    Build `app` with `docs_url=None, redoc_url=None` (their pages load a CDN)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    @app.get("/asyncapi.json", tags=["ops"], summary="The bus's AsyncAPI 3.0 document")
    async def asyncapi_json() -> JSONResponse:
        """Every NATS subject durachat uses and every message on it, from contracts/."""
        return JSONResponse(asyncapi_document())
