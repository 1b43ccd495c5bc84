"""The demo in ``examples/`` answers at once and sends its mail after the response.

These tests use Flask's test client, so they show what the demo does, not that the
client did not wait: that takes a real server (see ``make demo`` and tests/live).
"""

from __future__ import annotations

import logging
import types

import pytest
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def client(demo_app: Flask) -> FlaskClient:
    return demo_app.test_client()


def sent_to(demo: types.ModuleType, app: Flask) -> list[str]:
    """Who the demo's outbox holds a mail for, oldest first."""
    with app.app_context():
        return [mail.to for mail in demo.signup.outbox()]


def test_index_shows_the_signup_form(client: FlaskClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert b'name="email"' in response.data
    assert b"No mail sent yet." in response.data


def test_signup_redirects_and_sends_the_mail_after_the_response(
    demo: types.ModuleType, demo_app: Flask, client: FlaskClient
) -> None:
    # When the form is posted (buffered=True: the test client closes the response).
    response = client.post("/", data={"email": "ada@example.com"}, buffered=True)

    # Then the answer is a redirect to the form, with a flash message waiting there.
    assert response.status_code == 303
    assert response.location == "/"
    # And the mail callback ran after the response, with the request's form readable.
    assert demo.afterward.wait_for_callbacks(5, app=demo_app)
    assert sent_to(demo, demo_app) == ["ada@example.com"]
    page = client.get("/").data
    assert b"A mail to ada@example.com is on its way." in page
    assert b"<td>ada@example.com</td>" in page


def test_mail_waits_until_the_response_is_closed(
    demo: types.ModuleType, demo_app: Flask, client: FlaskClient
) -> None:
    # Given a response the client has not closed yet (no buffered=True, no "with").
    response = client.post("/", data={"email": "ada@example.com"})
    assert response.status_code == 303
    assert demo.afterward.wait_for_callbacks(5, app=demo_app)
    assert sent_to(demo, demo_app) == []

    # When the client closes it, as a server does after writing the last byte.
    response.close()

    # Then the callback runs.
    assert demo.afterward.wait_for_callbacks(5, app=demo_app)
    assert sent_to(demo, demo_app) == ["ada@example.com"]


def test_invalid_address_is_refused_and_no_mail_is_sent(
    demo: types.ModuleType, demo_app: Flask, client: FlaskClient
) -> None:
    response = client.post("/", data={"email": "nope"}, buffered=True)

    assert response.status_code == 400
    assert b"does not look like an email address" in response.data
    assert demo.afterward.wait_for_callbacks(5, app=demo_app)
    assert sent_to(demo, demo_app) == []


def test_every_delivered_response_is_logged_with_its_status(
    demo: types.ModuleType,
    demo_app: Flask,
    client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="demo")

    client.post("/", data={"email": "ada@example.com"}, buffered=True)
    assert demo.afterward.wait_for_callbacks(5, app=demo_app)

    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("sent welcome mail to ada@example.com") for m in messages)
    assert any(m.startswith("response delivered: POST / -> 303 in ") for m in messages)
