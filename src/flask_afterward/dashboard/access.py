"""Who may use the dashboard, and the CSRF check of its actions.

Closed unless configured (like Hangfire's local-only default): without
``AFTERWARD_DASHBOARD_AUTHORIZE`` only requests whose ``REMOTE_ADDR`` is a loopback
address get in. ``X-Forwarded-For`` is never read: anyone can send it. With the hook,
the app decides per action, ``"read"`` for pages and ``"write"`` for actions, and
``AFTERWARD_DASHBOARD_READ_ONLY`` refuses every write whatever the hook says. A
refusal is a 403.

CSRF: double-submit, signed. The first page sets a random value in a cookie
(``SameSite=Strict``, ``HttpOnly``, scoped to the dashboard's path), and each form
carries that value signed with the app's ``SECRET_KEY`` (itsdangerous, which Flask
ships). A POST passes only if its token is a valid signature of its own cookie's
value, so a page on another site, which can neither read the cookie nor sign, cannot
make a logged-in browser act.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import sys
import typing as t

from flask import abort
from flask import current_app
from flask import g
from flask import request
from itsdangerous import BadSignature
from itsdangerous import URLSafeTimedSerializer

from ..config import EXTENSION_KEY
from ..errors import ConfigurationError

if t.TYPE_CHECKING:
    from flask import Response

    from ..config import Settings

#: The cookie holding this browser's CSRF value.
CSRF_COOKIE: t.Final = "afterward_csrf"
#: The form field carrying the signed value.
CSRF_FIELD: t.Final = "csrf_token"
#: Seconds a form's token stays valid (a dashboard tab left open for a day still works).
CSRF_MAX_AGE: t.Final = 86400 * 7
_SALT: t.Final = "flask-afterward dashboard csrf"


def settings() -> Settings:
    value: Settings = current_app.extensions[EXTENSION_KEY].settings
    return value


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (a ``REMOTE_ADDR``) is 127.0.0.0/8 or ::1."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def may(action: str) -> bool:
    """Whether this request may ``action`` (``"read"`` or ``"write"``)."""
    config = settings()
    if action == "write" and config.dashboard_read_only:
        return False
    if config.dashboard_authorize is None:
        return is_loopback(request.environ.get("REMOTE_ADDR"))
    return bool(config.dashboard_authorize(action))


def check_access() -> None:
    """``before_request`` of the blueprint: 403 unless this request may go on."""
    action = "write" if request.method == "POST" else "read"
    if not may(action):
        if action == "write" and settings().dashboard_read_only and may("read"):
            abort(403, "The dashboard is read-only (AFTERWARD_DASHBOARD_READ_ONLY).")
        abort(403, "You may not use the job dashboard.")
    if action == "write":
        check_csrf()


def _serializer() -> URLSafeTimedSerializer:
    secret = current_app.secret_key
    if not secret:
        raise ConfigurationError(
            "The dashboard signs its forms with the app's SECRET_KEY, which is not set. "
            "Set SECRET_KEY, or make the dashboard read-only (AFTERWARD_DASHBOARD_READ_ONLY)."
        )
    return URLSafeTimedSerializer(secret, salt=_SALT)


def csrf_token() -> str:
    """The token for this browser's forms; sets its cookie with the response if new."""
    token: str | None = g.get("_afterward_csrf_token")
    if token is None:
        value = request.cookies.get(CSRF_COOKIE)
        if not value:
            value = g._afterward_csrf_cookie = secrets.token_urlsafe(16)
        token = g._afterward_csrf_token = _serializer().dumps(value)
    return token


def set_csrf_cookie(response: Response) -> Response:
    """``after_request``: store a new CSRF value made by :func:`csrf_token`."""
    value = g.get("_afterward_csrf_cookie")
    if value:
        response.set_cookie(
            CSRF_COOKIE,
            value,
            path=settings().url_prefix + "/",
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
    return response


def check_csrf() -> None:
    """400 unless the POST carries a valid token for its own cookie, from this site."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != request.host_url.rstrip("/"):
        abort(400, "This form was sent from another site.")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    token = request.form.get(CSRF_FIELD, "")
    try:
        value = _serializer().loads(token, max_age=CSRF_MAX_AGE)
    except BadSignature:
        abort(400, "The form's CSRF token is missing or invalid: reload the page and retry.")
    if not cookie or not isinstance(value, str) or not hmac.compare_digest(value, cookie):
        abort(400, "The form's CSRF token does not match this browser: reload the page.")


def actor() -> str:
    """Who is acting, for the log: the user if we can tell (Flask-Login's
    ``current_user`` when the app uses it, else ``REMOTE_USER`` or HTTP auth), and the
    client address."""
    user = _login_user() or request.environ.get("REMOTE_USER")
    if not user and request.authorization:
        user = request.authorization.username
    address = request.remote_addr or "?"
    return f"{user}@{address}" if user else address


def _login_user() -> str | None:
    """Flask-Login's user id, if the app uses Flask-Login (never imported by us)."""
    flask_login = sys.modules.get("flask_login")
    if flask_login is None or getattr(current_app, "login_manager", None) is None:
        return None
    user = flask_login.current_user
    if not getattr(user, "is_authenticated", False):
        return None
    return str(user.get_id())
