"""/docs renders in Chromium with every non-local request refused (no CDN), and the gateway
serves the OpenAPI and AsyncAPI documents it describes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from services.localsystem import LocalSystem
from tests.support import http

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium package is missing (/usr/bin/chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


def test_docs_render_with_the_network_cut_off(system: LocalSystem):
    refused: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context()

            def only_local(route) -> None:
                if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    refused.append(route.request.url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            page.goto(system.base_url + "/docs")
            # Swagger UI drew the document: its title and an operation of ours.
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("durachat gateway",
                                                                             timeout=15_000)
            expect(page.locator(".opblock-summary-path", has_text="/readyz").first).to_be_visible()
        finally:
            browser.close()
    assert refused == [], f"/docs asked the network for {refused}"


def test_openapi_and_asyncapi_are_served(system: LocalSystem):
    openapi = http(system, "GET", "/openapi.json").json()
    socket = openapi["paths"]["/api/room/{name}/websocket"]["get"]["responses"]
    assert {"400", "404"} <= set(socket)
    context = openapi["paths"]["/api/users/{user_id}/context"]["put"]["responses"]
    assert {"401", "403", "413", "415", "422", "503"} <= set(context)
    asyncapi = http(system, "GET", "/asyncapi.json").json()
    assert asyncapi["asyncapi"] == "3.0.0" and "roomCommands" in asyncapi["channels"]
