"""The dashboard in chromium on a real server: live lists, a failed job retried, a bulk
cancel, and refusals."""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import re
import socket

import pytest
from playwright.sync_api import expect
from playwright.sync_api import Page

from tests.apps.dashboard import FIXED_MARK
from tests.browser.conftest import Console
from tests.browser.conftest import Server

Shot = cabc.Callable[[str], pathlib.Path]


def test_jobs_appear_and_finish_live_without_a_reload(
    server: Server, page: Page, screenshot: Shot
) -> None:
    # Given the list page, open before any job exists
    page.goto(f"{server.url}/browse")
    page.evaluate("window.notReloaded = true")
    expect(page.locator("[data-live-status]")).to_have_text(re.compile("live"))
    # When jobs are submitted elsewhere
    ids = server.submit("slow", 3, seconds=3)
    rows = page.locator("tr[data-job]")
    # Then they appear, run and finish on the same page
    expect(rows).to_have_count(3)
    expect(page.locator('tr[data-state="running"]').first).to_be_visible()
    screenshot("jobs-running")
    for job_id in ids:
        expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_attribute(
            "data-state", "succeeded", timeout=20_000
        )
    assert page.evaluate("window.notReloaded") is True
    page.goto(f"{server.url}/")
    screenshot("overview")


def test_a_failed_job_shows_its_traceback_and_succeeds_when_retried(
    server: Server, page: Page, screenshot: Shot
) -> None:
    (job_id,) = server.submit("flaky")
    page.goto(f"{server.url}/browse?state=failed")
    page.locator(f'tr[data-job="{job_id}"] a').click()

    traceback = page.locator("[data-traceback]")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("RuntimeError: the file")
    screenshot("job-failed")

    (server.folder / FIXED_MARK).write_text("")
    page.locator('button[data-action="retry"]').click()
    expect(page.locator("[data-job-state]")).to_have_text("succeeded", timeout=20_000)
    expect(page.locator("[data-traceback]")).to_have_count(0)


def test_bulk_cancel_of_a_filtered_set(server: Server, page: Page, screenshot: Shot) -> None:
    later = server.submit("later", 4)
    server.submit("add", 2)
    page.goto(f"{server.url}/browse?state=scheduled&queue=mail")
    expect(page.locator("tr[data-job]")).to_have_count(4)

    page.get_by_role("link", name="cancel…").click()
    expect(page.locator("h1")).to_contain_text("Cancel every job matching this filter?")
    screenshot("bulk-confirm")
    page.locator('button[data-confirm="cancel"]').click()

    expect(page.locator(".aw-notice")).to_contain_text("4 jobs cancelled")
    expect(page.locator("tr[data-job]")).to_have_count(0)
    page.goto(f"{server.url}/browse?state=cancelled")
    for job_id in later:
        expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(1)


def test_the_workers_page_shows_the_worker_threads(
    server: Server, page: Page, screenshot: Shot
) -> None:
    server.submit("add")  # starts the app's worker threads
    page.goto(f"{server.url}/workers")

    expect(page.locator("tr[data-worker]")).to_have_count(2, timeout=20_000)
    screenshot("workers")


def test_a_refused_user_sees_403_and_a_reader_sees_no_actions(
    start_server: cabc.Callable[..., Server], page: Page, console: Console
) -> None:
    server = start_server(hook=True)
    # The refusal itself, and Werkzeug's 403 page's request for /favicon.ico.
    console.allowed += ["status of 403", "status of 404"]

    page.set_extra_http_headers({"X-Test-User": "nobody"})
    refused = page.goto(f"{server.url}/")
    assert refused is not None and refused.status == 403

    page.set_extra_http_headers({"X-Test-User": "reader"})
    read = page.goto(f"{server.url}/browse")
    assert read is not None and read.status == 200
    expect(page.locator(".aw-bulk")).to_have_count(0)


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_without_a_hook_a_non_loopback_request_is_refused(
    start_server: cabc.Callable[..., Server], page: Page, console: Console
) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    server = start_server(host="0.0.0.0")
    # The refusal itself, and Werkzeug's 403 page's request for /favicon.ico.
    console.allowed += ["status of 403", "status of 404"]

    outside = page.goto(f"http://{address}:{server.port}/afterward/")
    inside = page.goto(f"{server.url}/")

    assert outside is not None and outside.status == 403
    assert inside is not None and inside.status == 200
