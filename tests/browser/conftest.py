"""Playwright driving Debian's chromium against the dashboard on a real server.

The server is ``tests.apps.dashboard`` in a subprocess (werkzeug, threaded, with worker
threads), on a socket this process bound, with its log in the test's ``tmp_path``.
Every page fails its test on a console error or an uncaught exception.

Without Playwright or chromium the tests skip locally; under CI (``CI=true``) they
fail, so CI never passes by skipping them (``.ci/run`` installs both).
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import typing as t

import pytest
import requests

from tests.live.server import python_env
from tests.live.server import REPO
from tests.live.server import wait_until

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import Page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Where screenshots for the docs go when ``DASHBOARD_SCREENSHOTS=docs`` is set.
DOCS_SCREENSHOTS = REPO / "docs" / "_static" / "dashboard"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not os.path.exists(CHROMIUM):
        return "chromium is not installed (apt-get install chromium)"
    return None


MISSING = _missing()
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the browser tests: {MISSING}.")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            if MISSING:
                item.add_marker(pytest.mark.skip(reason=MISSING))


class Server:
    """The dashboard test app served in a subprocess; ``url`` is its dashboard."""

    def __init__(self, folder: pathlib.Path, *, hook: bool, host: str) -> None:
        self.folder = folder
        self.hook = hook
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/afterward"

    def submit(self, kind: str, count: int = 1, **form: object) -> list[str]:
        response = requests.post(f"{self.root}/submit/{kind}", data={"count": count, **form})
        response.raise_for_status()
        ids: list[str] = response.json()["ids"]
        return ids

    def __enter__(self) -> Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        listener = socket.socket()
        try:
            listener.bind((self.host, 0))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            fd = listener.fileno()
            command = [sys.executable, "-m", "tests.apps.dashboard", str(fd), str(self.folder)]
            with open(self.folder / "server.log", "ab") as log:
                self.process = subprocess.Popen(
                    [*command, *(["hook"] if self.hook else [])],
                    cwd=REPO,
                    env=python_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=[fd],
                )
        finally:
            listener.close()
        headers = {"X-Test-User": "admin"} if self.hook else {}
        if not wait_until(lambda: self._is_up(headers), timeout=30):
            self.__exit__()
            raise RuntimeError(f"the server did not start:\n{self.log()}")
        return self

    def _is_up(self, headers: dict[str, str]) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{self.log()}")
        with contextlib.suppress(requests.ConnectionError):
            return requests.get(f"{self.url}/", headers=headers, timeout=2).status_code == 200
        return False

    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_server(tmp_path: pathlib.Path) -> cabc.Iterator[cabc.Callable[..., Server]]:
    """``start_server(hook=False, host="127.0.0.1")``; stopped after the test."""
    started: list[Server] = []

    def start(*, hook: bool = False, host: str = "127.0.0.1") -> Server:
        server = Server(tmp_path / f"server{len(started)}", hook=hook, host=host)
        started.append(server)
        return server.__enter__()

    yield start
    for server in started:
        server.__exit__()


@pytest.fixture
def server(start_server: cabc.Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture(scope="module")
def browser() -> cabc.Iterator[Browser]:
    """Chromium for one module. Not for the session: Playwright's sync API keeps an
    event loop running in this thread while it is open, and later tests that call
    ``asyncio.run`` (async tasks) would fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


class Console:
    """Console errors and uncaught exceptions of a page; ``allowed`` ones excepted."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[str] = []

    def check(self) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in self.allowed)]
        assert not unexpected, f"errors in the browser console: {unexpected}"


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> cabc.Iterator[Page]:
    """A fresh browser context and page; the test fails on any console error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    opened.on("console", lambda msg: msg.type == "error" and console.errors.append(msg.text))
    opened.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    yield opened
    context.close()
    console.check()


@pytest.fixture
def screenshot(tmp_path: pathlib.Path, page: Page) -> cabc.Callable[[str], pathlib.Path]:
    """``screenshot(name)``: a PNG of the page in ``tmp_path``; with
    ``DASHBOARD_SCREENSHOTS=docs``, also in ``docs/_static/dashboard/``."""

    def take(name: str) -> pathlib.Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if os.environ.get("DASHBOARD_SCREENSHOTS") == "docs":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)
        return path

    return take
