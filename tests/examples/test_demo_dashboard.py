"""The demo turns the dashboard on, and every demo page links to every other."""

from __future__ import annotations

from flask import Flask

PAGES = {"/": "Callbacks", "/jobs/": "Durable jobs", "/reports/": "Reports"}


def test_every_demo_page_links_to_every_other_and_the_dashboard(app: Flask) -> None:
    client = app.test_client()

    for url in PAGES:
        html = client.get(url).get_data(as_text=True)
        for other, label in PAGES.items():
            if other != url:
                assert f'href="{other}">{label}</a>' in html, (url, other)
        assert 'href="/afterward/">Dashboard</a>' in html, url


def test_a_job_submitted_in_the_demo_shows_on_the_dashboard(app: Flask) -> None:
    client = app.test_client()

    client.post("/jobs/", data={"email": "ada@example.org"})
    html = client.get("/afterward/browse?q=welcome_mail").get_data(as_text=True)

    assert html.count("data-job=") == 1
