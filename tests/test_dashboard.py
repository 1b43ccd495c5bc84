"""The dashboard through the Flask test client: pages, actions, access and CSRF.

The app is ``tests.apps.dashboard`` with no worker threads: tests run jobs with
``run_burst``, so every state is reached on purpose. The browser tests
(``tests/browser/``) drive the same app on a real server.
"""

from __future__ import annotations

import collections.abc as cabc
import json
import logging
import pathlib
import re
import subprocess
import sys
import time
import typing as t

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_afterward.dashboard import access
from flask_afterward.records import State
from flask_afterward.stores.base import ObservableStore
from tests.apps import dashboard
from tests.apps.dashboard import afterward
from tests.tier2 import run_burst
from tests.tier2 import store_of

PREFIX = "/afterward"


@pytest.fixture(params=["memory://", "sqlite"])
def make_app(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> cabc.Iterator[cabc.Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: t.Any) -> Flask:
        folder = tmp_path / f"app{len(apps)}"
        config = {"TESTING": True, "AFTERWARD_WORKERS": 0, **config}
        if request.param != "sqlite":
            config.setdefault("AFTERWARD_STORE", request.param)
        app = dashboard.create_app(folder, **config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        afterward.close(app, timeout=5)


@pytest.fixture
def app(make_app: cabc.Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def observable(app: Flask) -> ObservableStore:
    store = store_of(app)
    assert isinstance(store, ObservableStore)
    return store


def submit(client: FlaskClient, kind: str = "add", count: int = 1) -> list[str]:
    response = client.post(f"/submit/{kind}", data={"count": count})
    assert response.status_code == 200
    ids: list[str] = response.json["ids"]  # type: ignore[index]
    return ids


def token(client: FlaskClient, url: str = f"{PREFIX}/") -> str:
    """The CSRF token of a page (which also sets the client's CSRF cookie)."""
    html = client.get(url).get_data(as_text=True)
    found = re.search(r'name="afterward-csrf" content="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def state(app: Flask, job_id: str) -> State | None:
    record = store_of(app).get(job_id)
    return None if record is None else record.state


# -- pages ---------------------------------------------------------------------------


def test_overview_counts_jobs_per_state_and_queue(app: Flask, client: FlaskClient) -> None:
    submit(client, "add", 3)
    submit(client, "later", 2)

    html = client.get(f"{PREFIX}/").get_data(as_text=True)

    assert 'data-count="queued">3<' in html
    assert 'data-count="scheduled">2<' in html
    assert f'href="{PREFIX}/browse?queue=mail&amp;state=scheduled">2<' in html
    assert "<svg" in html and "Finished per minute" in html


def test_overview_chart_shows_the_rolled_up_minutes(app: Flask, client: FlaskClient) -> None:
    # Given jobs that finished two minutes ago, rolled up as the supervisor does
    store = observable(app)
    minute = (time.time() // 60 - 2) * 60
    for state_ in (State.SUCCEEDED, State.SUCCEEDED, State.FAILED):
        record = store.get(submit(client)[0])
        assert record is not None
        store.delete(record.id)
        store.enqueue(record.replace(state=state_, started_at=minute, finished_at=minute + 1))
    store.rollup(time.time())

    chart = client.get(f"{PREFIX}/").get_data(as_text=True)

    assert "3 finished, 1 failed" in chart
    assert "3 jobs" in chart


def test_list_filters_are_bookmarkable_get_urls(app: Flask, client: FlaskClient) -> None:
    adds = submit(client, "add", 2)
    mails = submit(client, "later", 1)

    queued = client.get(f"{PREFIX}/browse?state=queued").get_data(as_text=True)
    mail = client.get(f"{PREFIX}/browse?queue=mail").get_data(as_text=True)
    found = client.get(f"{PREFIX}/browse?q=user0@example").get_data(as_text=True)

    assert all(f'data-job="{job_id}"' in queued for job_id in adds)
    assert f'data-job="{mails[0]}"' not in queued
    assert f'data-job="{mails[0]}"' in mail and f'data-job="{adds[0]}"' not in mail
    assert f'data-job="{mails[0]}"' in found and f'data-job="{adds[0]}"' not in found


def test_list_pages_follow_a_cursor(client: FlaskClient) -> None:
    ids = submit(client, "add", 55)

    first = client.get(f"{PREFIX}/browse").get_data(as_text=True)
    next_url = re.search(r'href="([^"]+)" rel="next"', first)
    assert next_url is not None
    second = client.get(next_url.group(1).replace("&amp;", "&")).get_data(as_text=True)

    assert first.count("data-job=") == 50 and second.count("data-job=") == 5
    assert f'data-job="{ids[0]}"' in second and f'data-job="{ids[-1]}"' in first


def test_short_search_is_ignored_with_a_note(client: FlaskClient) -> None:
    submit(client)

    html = client.get(f"{PREFIX}/browse?q=ad").get_data(as_text=True)

    assert "Search needs at least 3 characters" in html and "data-job=" in html


@pytest.mark.parametrize("url", ["/browse?state=nope", "/browse?cursor=drop%20table"])
def test_bad_list_arguments_are_400(client: FlaskClient, url: str) -> None:
    assert client.get(PREFIX + url).status_code == 400


def test_job_page_shows_arguments_error_and_traceback(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client, "flaky")
    run_burst(app, afterward)

    html = client.get(f"{PREFIX}/job/{job_id}").get_data(as_text=True)

    assert "RuntimeError" in html and "is missing" in html
    assert "data-traceback" in html and "Traceback (most recent call last)" in html
    assert "fixed" in html  # the argument: the path of the file it waits for
    assert 'data-action="retry"' in html


def test_job_page_of_an_unknown_job_is_404(client: FlaskClient) -> None:
    assert client.get(f"{PREFIX}/job/{'a' * 22}").status_code == 404
    assert client.get(f"{PREFIX}/job/nope").status_code == 404


def test_workers_page_marks_stale_workers(app: Flask, client: FlaskClient) -> None:
    from flask_afterward.stores.base import WorkerBeat

    now = time.time()
    observable(app).heartbeat(
        [
            WorkerBeat(
                id="h:1:alive:x",
                host="h",
                pid=1,
                thread="alive",
                queues=None,
                job_id=None,
                seen_at=now,
            ),
            WorkerBeat(
                id="h:1:gone:y",
                host="h",
                pid=1,
                thread="gone",
                queues=("mail",),
                job_id=None,
                seen_at=now - 120,
            ),
        ]
    )

    html = client.get(f"{PREFIX}/workers").get_data(as_text=True)

    pattern = r'<tr class="([^"]*)" data-worker="([^"]+)"'
    rows = {worker: css for css, worker in re.findall(pattern, html)}
    assert rows == {"h:1:alive:x": "", "h:1:gone:y": "aw-stale"}


def test_a_worker_group_writes_heartbeats(app: Flask) -> None:
    from flask_afterward.stores.base import observe
    from tests.tier2 import group_for

    group = group_for(app, afterward, threads=2)
    group.start()
    try:
        observe(group)
    finally:
        group.close(timeout=5)
    beats = observable(app).workers()
    assert len(beats) == 2 and {beat.pid for beat in beats} == {__import__("os").getpid()}


def test_live_fragment_and_event_stream(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client)

    fragment = client.get(f"{PREFIX}/browse?live=fragment")
    with client.get(f"{PREFIX}/job/{job_id}?live=events") as stream:
        assert stream.mimetype == "text/event-stream"
        chunks = iter(stream.response)
        assert next(chunks) == b"retry: 1000\n\n"
        first = b""
        while b"event: update" not in first:
            first += next(chunks)

    assert fragment.status_code == 200 and f'data-job="{job_id}"' in fragment.get_data(True)
    data = first.split(b"data: ", 1)[1].split(b"\n", 1)[0]
    assert job_id in json.loads(data)


# -- actions -------------------------------------------------------------------------


def test_retry_of_a_failed_job_then_it_succeeds(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client, "flaky")
    run_burst(app, afterward)
    assert state(app, job_id) == State.FAILED
    folder = pathlib.Path(app.instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / dashboard.FIXED_MARK).write_text("")

    response = client.post(
        f"{PREFIX}/job/{job_id}/retry", data={"csrf_token": token(client, f"{PREFIX}/job/{job_id}")}
    )
    run_burst(app, afterward)

    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/job/{job_id}?done=retried")
    assert state(app, job_id) == State.SUCCEEDED


def test_cancel_and_delete_one_job(app: Flask, client: FlaskClient) -> None:
    first, second = submit(client, "add", 2)
    csrf = token(client)

    cancelled = client.post(f"{PREFIX}/job/{first}/cancel", data={"csrf_token": csrf})
    deleted = client.post(f"{PREFIX}/job/{second}/delete", data={"csrf_token": csrf})

    assert cancelled.status_code == deleted.status_code == 303
    assert state(app, first) == State.CANCELLED
    assert state(app, second) is None
    assert deleted.headers["Location"].endswith("/browse?done=deleted")


def test_an_action_that_changes_nothing_says_so(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client)

    response = client.post(
        f"{PREFIX}/job/{job_id}/retry", data={"csrf_token": token(client)}, follow_redirects=True
    )

    assert "Nothing changed" in response.get_data(as_text=True)
    assert state(app, job_id) == State.QUEUED


def test_row_actions_return_to_the_list(client: FlaskClient) -> None:
    (job_id,) = submit(client)
    page = f"{PREFIX}/browse?state=queued"

    response = client.post(
        f"{PREFIX}/job/{job_id}/cancel",
        data={"csrf_token": token(client, page), "next": page},
    )
    evil = client.post(
        f"{PREFIX}/job/{job_id}/cancel",
        data={"csrf_token": token(client, page), "next": "//evil.example/"},
    )

    assert response.headers["Location"] == page + "&done=cancelled"
    assert "evil" not in evil.headers["Location"]


def test_bulk_cancel_of_a_filtered_set_after_confirmation(app: Flask, client: FlaskClient) -> None:
    adds = submit(client, "add", 3)
    mails = submit(client, "later", 2)
    confirm = f"{PREFIX}/bulk/cancel?queue=mail&state=scheduled"

    page = client.get(confirm).get_data(as_text=True)
    response = client.post(
        f"{PREFIX}/bulk/cancel",
        data={"csrf_token": token(client, confirm), "queue": "mail", "state": "scheduled"},
    )

    assert "Cancel every job matching this filter?" in page
    assert all(f'data-job="{job_id}"' in page for job_id in mails)
    assert response.status_code == 303 and "done=cancelled-2" in response.headers["Location"]
    assert {state(app, job_id) for job_id in mails} == {State.CANCELLED}
    assert {state(app, job_id) for job_id in adds} == {State.QUEUED}


def test_bulk_retry_and_delete(app: Flask, client: FlaskClient) -> None:
    failed = submit(client, "flaky", 2)
    run_burst(app, afterward)
    csrf = token(client)

    retried = client.post(f"{PREFIX}/bulk/retry", data={"csrf_token": csrf, "state": "failed"})
    deleted = client.post(f"{PREFIX}/bulk/delete", data={"csrf_token": csrf, "state": "queued"})

    assert "done=retried-2" in retried.headers["Location"]
    assert "done=deleted-2" in deleted.headers["Location"]
    assert [state(app, job_id) for job_id in failed] == [None, None]


def test_bulk_action_without_a_filter_needs_everything_confirmed(
    app: Flask, client: FlaskClient
) -> None:
    (job_id,) = submit(client)
    csrf = token(client)

    refused = client.post(f"{PREFIX}/bulk/cancel", data={"csrf_token": csrf})
    done = client.post(f"{PREFIX}/bulk/cancel", data={"csrf_token": csrf, "everything": "yes"})

    assert refused.status_code == 400 and done.status_code == 303
    assert state(app, job_id) == State.CANCELLED


def test_actions_are_logged_with_who_and_what(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    (job_id,) = submit(client)
    csrf = token(client)

    with caplog.at_level(logging.INFO, logger="flask_afterward"):
        client.post(f"{PREFIX}/job/{job_id}/cancel", data={"csrf_token": csrf})
        client.post(f"{PREFIX}/bulk/delete", data={"csrf_token": csrf, "state": "cancelled"})

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("flask_afterward")]
    assert (
        f"Dashboard: 127.0.0.1 cancelled job {job_id} (tests.apps.dashboard.add, was queued)."
        in messages
    )
    assert "Dashboard: 127.0.0.1 deleted 1 jobs matching {'state': 'cancelled'}." in messages


# -- CSRF ----------------------------------------------------------------------------


def test_an_action_without_a_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client)
    token(client)  # the browser has its cookie, but the form has no token

    response = client.post(f"{PREFIX}/job/{job_id}/cancel")

    assert response.status_code == 400 and b"CSRF" in response.data
    assert state(app, job_id) == State.QUEUED


def test_a_token_from_another_browser_is_refused(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client)
    stolen = token(app.test_client())  # another browser's page: its own cookie
    token(client)

    response = client.post(f"{PREFIX}/job/{job_id}/cancel", data={"csrf_token": stolen})

    assert response.status_code == 400
    assert state(app, job_id) == State.QUEUED


def test_a_form_sent_from_another_site_is_refused(app: Flask, client: FlaskClient) -> None:
    (job_id,) = submit(client)

    response = client.post(
        f"{PREFIX}/job/{job_id}/cancel",
        data={"csrf_token": token(client)},
        headers={"Origin": "https://evil.example"},
    )

    assert response.status_code == 400 and state(app, job_id) == State.QUEUED


def test_the_csrf_cookie_is_strict_and_http_only(client: FlaskClient) -> None:
    response = client.get(f"{PREFIX}/")

    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{access.CSRF_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Path={PREFIX}/" in cookie


# -- access --------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_a_hook_loopback_requests_are_let_in(client: FlaskClient, address: str) -> None:
    assert client.get(f"{PREFIX}/", environ_base={"REMOTE_ADDR": address}).status_code == 200


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.2", "2001:db8::1", "", "garbage"])
def test_without_a_hook_other_addresses_are_refused(client: FlaskClient, address: str) -> None:
    response = client.get(f"{PREFIX}/", environ_base={"REMOTE_ADDR": address})

    assert response.status_code == 403


def test_x_forwarded_for_does_not_make_a_request_loopback(client: FlaskClient) -> None:
    response = client.get(
        f"{PREFIX}/",
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
        headers={"X-Forwarded-For": "127.0.0.1"},
    )

    assert response.status_code == 403


def test_the_static_files_are_behind_the_same_rule(client: FlaskClient) -> None:
    ok = client.get(f"{PREFIX}/dashboard-static/afterward.js")
    refused = client.get(
        f"{PREFIX}/dashboard-static/afterward.js", environ_base={"REMOTE_ADDR": "10.0.0.1"}
    )

    assert ok.status_code == 200 and refused.status_code == 403
    ok.close()


def test_startup_warns_when_the_dashboard_is_loopback_only(
    make_app: cabc.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_afterward"):
        make_app()
        make_app(AFTERWARD_DASHBOARD_AUTHORIZE=lambda action: True)

    warnings = [r for r in caplog.records if "loopback" in r.getMessage()]
    assert len(warnings) == 1


def test_the_hook_decides_read_and_write(
    make_app: cabc.Callable[..., Flask],
) -> None:
    asked: list[str] = []

    def authorize(action: str) -> bool:
        asked.append(action)
        return action == "read"

    app = make_app(AFTERWARD_DASHBOARD_AUTHORIZE=authorize)
    client = app.test_client()
    (job_id,) = submit(client)
    remote = {"REMOTE_ADDR": "203.0.113.9"}  # with a hook, the address does not matter

    page = client.get(f"{PREFIX}/job/{job_id}", environ_base=remote)
    csrf = token(client, f"{PREFIX}/job/{job_id}") if b"csrf_token" in page.data else "x"
    refused = client.post(
        f"{PREFIX}/job/{job_id}/cancel", data={"csrf_token": csrf}, environ_base=remote
    )

    assert page.status_code == 200 and b'data-action="cancel"' not in page.data
    assert refused.status_code == 403
    assert state(app, job_id) == State.QUEUED
    assert "read" in asked and "write" in asked


def test_a_refused_user_gets_403_on_every_page(make_app: cabc.Callable[..., Flask]) -> None:
    client = make_app(AFTERWARD_DASHBOARD_AUTHORIZE=lambda action: False).test_client()

    for url in ["/", "/browse", "/workers", f"/job/{'a' * 22}", "/bulk/cancel"]:
        assert client.get(PREFIX + url).status_code == 403, url


def test_read_only_refuses_actions_and_hides_buttons(make_app: cabc.Callable[..., Flask]) -> None:
    app = make_app(
        AFTERWARD_DASHBOARD_READ_ONLY=True, AFTERWARD_DASHBOARD_AUTHORIZE=lambda action: True
    )
    client = app.test_client()
    (job_id,) = submit(client)

    page = client.get(f"{PREFIX}/job/{job_id}")
    refused = client.post(f"{PREFIX}/job/{job_id}/cancel", data={"csrf_token": "x"})

    assert page.status_code == 200 and b"data-action=" not in page.data
    assert refused.status_code == 403 and b"read-only" in refused.data
    assert state(app, job_id) == State.QUEUED


def test_the_hook_must_be_callable(make_app: cabc.Callable[..., Flask]) -> None:
    from flask_afterward.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="AFTERWARD_DASHBOARD_AUTHORIZE"):
        make_app(AFTERWARD_DASHBOARD_AUTHORIZE="admin")


def test_the_dashboard_is_not_imported_unless_enabled() -> None:
    code = (
        "import sys, flask; from flask_afterward import Afterward;"
        "app = flask.Flask('x'); app.config['AFTERWARD_STORE'] = 'memory://';"
        "Afterward(app); print('flask_afterward.dashboard' in sys.modules,"
        " any(r.endpoint.startswith('afterward_dashboard') for r in app.url_map.iter_rules()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.split() == ["False", "False"]
