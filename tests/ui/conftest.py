"""Fixtures for the UI tests: one headless Chromium per run, one `belle ui --web` server per test
(its own BELLE_HOME, the default model from the shared test models folder)."""

import json
import os

import pytest

from .browser import CHROMIUM, CHROMIUM_ARGS, UIServer, open_app


def _write_config(home, **values) -> None:
    (home / "config.json").write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed: apt-get install chromium (scripts/setup.sh --dev does it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def ui_server(belle_home, default_model_path, output_dir):
    """Start the server; English labels unless a test rewrites config.json before calling it.
    `config`: more settings for config.json; `env`: more environment for the server (HF_ENDPOINT)."""
    servers = []

    def start(language: str = "en", models_dir=None, env: dict | None = None, config: dict | None = None):
        _write_config(belle_home, language=language, **(config or {}))
        server = UIServer(output_dir / "server.log", env={
            "BELLE_HOME": str(belle_home), "BELLE_MODELS_DIR": str(models_dir or default_model_path.parent),
            **(env or {})})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def app_page(browser, ui_server, output_dir, request):
    """open(width, height, language) -> a Playwright page on a fresh server; screenshots land in output_dir."""
    pages = []
    request.node.belle_pages = (pages, output_dir)  # for the failure report below

    def open_(width: int = 1280, height: int = 800, language: str = "en", models_dir=None, env: dict | None = None,
              config: dict | None = None):
        server = ui_server(language, models_dir, env, config)
        page = open_app(browser, server.url, width, height)
        page.server = server
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a browser test fails, keep what the page showed and what the machine was busy with at
    that moment (failed-*.png, failed.txt in its test-output folder): a UI test that fails once in
    many runs must leave enough behind to find the cause."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or not hasattr(item, "belle_pages"):
        return
    import subprocess

    from .browser import texts

    pages, output_dir = item.belle_pages
    lines = [f"load average: {os.getloadavg()}"]
    # top's second frame: CPU use over the last second (ps would show averages over each lifetime)
    frames = subprocess.run(["top", "-b", "-c", "-n", "2", "-d", "1", "-w", "200"], capture_output=True,
                            text=True).stdout.split("\ntop - ")
    lines.append("\n".join(("top - " + frames[-1]).splitlines()[:30]))
    for i, page in enumerate(pages):
        try:
            page.screenshot(path=output_dir / f"failed-{i}.png", timeout=10000)
            lines += [f"--- page {i} text:", texts(page)]
        except Exception as err:  # a page that hangs is itself the finding
            lines.append(f"--- page {i}: no screenshot or text ({err})")
    (output_dir / "failed.txt").write_text("\n".join(lines))
