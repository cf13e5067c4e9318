"""The console in a real headless Chromium: access (login page, cookie, 401s, CSP, hostile text)
and the five views after a real agent run (journald lines, a Websh session with a recording, an
``exec``, an sftp transfer and logins through a real sshd). Screenshots go to artifacts/screenshots."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tests.browser import Browser
from tests.harness import TOKEN, ReceiverProcess, _http
from tests.support import wait_until

LOGIN_TIMEOUT = 20


def post_batch(receiver: ReceiverProcess, events: list[dict[str, Any]]) -> Any:
    batch = {"schema": 1, "agent": {"id": "agent-console", "server": "web-01", "hostname": "web-01",
                                    "version": "0.1.0"},
             "batch_id": "batch-" + secrets.token_hex(6), "sent_at": "2026-12-01T20:00:00.000Z", "events": events}
    return _http("POST", receiver.ingest_url, batch)


def login(b: Browser, receiver: ReceiverProcess, token: str = TOKEN) -> None:
    b.get(receiver.url + "/")
    wait_until(lambda: b.css("#token"), LOGIN_TIMEOUT, what="the login form")
    b.one("#token").send_keys(token)
    b.one("#login-button").click()


def raw(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class TestConsoleAccess:
    """Without the token there is only the login page; the cookie is HttpOnly and SameSite=Strict."""

    def test_login_page_only_without_token(self, receiver: ReceiverProcess, browser: Browser) -> None:
        """A fresh browser lands on the login page and sees no view; the API answers it 401."""
        browser.get(receiver.url + "/console/#/logs")
        wait_until(lambda: browser.css("#token"), LOGIN_TIMEOUT, what="the login form")
        assert urllib.parse.urlsplit(browser.driver.current_url).path == "/console/login"
        assert not browser.css("#nav") and not browser.css("table")
        status = browser.driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/v1/system-logs').then(r => done(r.status));")
        assert status == 401
        browser.shot("login")

    def test_wrong_token_is_refused(self, receiver: ReceiverProcess, browser: Browser) -> None:
        """A wrong token gives the login page again with a note, and no cookie."""
        login(browser, receiver, "wrong-" + TOKEN)
        wait_until(lambda: browser.css("#login-failed") and browser.one("#login-failed").is_displayed(), 10,
                   what="the refusal note")
        assert browser.driver.get_cookies() == []

    def test_cookie_opens_reads_only(self, receiver: ReceiverProcess, browser: Browser) -> None:
        """The right token sets an HttpOnly, SameSite=Strict cookie that opens the read API, never ingest."""
        login(browser, receiver)
        browser.ready()
        cookies = {c["name"]: c for c in browser.driver.get_cookies()}
        c = cookies["alpacon_console"]
        assert c["httpOnly"] is True and c["sameSite"] == "Strict" and c["path"] == "/"
        assert browser.driver.execute_script("return document.cookie") == ""  # HttpOnly: not visible to scripts
        status = browser.driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/v1/system-logs').then(r => done(r.status));")
        assert status == 200
        ingest = browser.driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/v1/agent/events', {method: 'POST', body: '{}',"
            " headers: {'Content-Type': 'application/json'}}).then(r => done(r.status));")
        assert ingest == 401
        faults = browser.driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/v1/_faults').then(r => done(r.status));")
        assert faults == 401
        # signing out ends the session on the server, not only in this browser
        sid = c["value"]
        browser.one("#logout").click()
        wait_until(lambda: browser.css("#token"), LOGIN_TIMEOUT, what="the login form after sign-out")
        status, _, _ = raw("GET", receiver.url + "/api/v1/system-logs", headers={"Cookie": f"alpacon_console={sid}"})
        assert status == 401

    def test_set_cookie_header_and_security_headers(self, receiver: ReceiverProcess) -> None:
        """The Set-Cookie header itself carries HttpOnly and SameSite=Strict; pages carry a CSP."""
        form = urllib.parse.urlencode({"token": TOKEN}).encode()
        status, headers, _ = raw("POST", receiver.url + "/console/login", form,
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303 and headers["Location"] == "/console/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        status, headers, _ = raw("GET", receiver.url + "/console/login")
        assert status == 200
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        status, headers, _ = raw("GET", receiver.url + "/console/")
        assert status == 302 and headers["Location"] == "/console/login"

    def test_cross_site_login_and_forged_cookies_refused(self, receiver: ReceiverProcess) -> None:
        """A login posted from another origin is refused; a made-up cookie opens nothing."""
        form = urllib.parse.urlencode({"token": TOKEN}).encode()
        status, headers, body = raw("POST", receiver.url + "/console/login", form,
                                    {"Content-Type": "application/x-www-form-urlencoded",
                                     "Origin": "http://evil.example"})
        assert status == 403 and "Set-Cookie" not in headers
        for forged in ("x", "A" * 43, "", "../../etc/passwd"):
            status, _, _ = raw("GET", receiver.url + "/api/v1/system-logs",
                               headers={"Cookie": f"alpacon_console={forged}"})
            assert status == 401
        status, _, _ = raw("POST", receiver.url + "/console/login", b"token=" + b"A" * 10_000,
                           {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 413

    def test_static_files_stay_in_their_folder(self, receiver: ReceiverProcess) -> None:
        """Path tricks on the static route find nothing outside static/."""
        for path in ("../__init__.py", "..%2f__init__.py", "%2e%2e/%2e%2e/app.py", "vendor/../../__init__.py",
                     "index.html"):
            status, _, body = raw("GET", receiver.url + "/console/static/" + path)
            assert status == 404, (path, status)
        status, headers, _ = raw("GET", receiver.url + "/console/static/console.js")
        assert status == 200 and "Content-Security-Policy" in headers

    def test_hostile_text_is_shown_as_text(self, receiver: ReceiverProcess, browser: Browser) -> None:
        """A log message and a user name made of HTML and script are shown literally and run nothing."""
        payload = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
        post_batch(receiver, [
            {"id": "ev-hostile-1", "kind": "system_log", "ts": "2026-12-01T20:00:00.000Z", "server": "web-01",
             "data": {"program": "evil", "level": "error", "pid": 1, "message": payload}},
            {"id": "ev-hostile-2", "kind": "user_activity", "ts": "2026-12-01T20:00:00.000Z", "server": "web-01",
             "data": {"user": payload, "ip": "203.0.113.9", "action": "login", "result": 200}},
        ])
        login(browser, receiver)
        browser.ready()
        for route in ("#/logs", "#/activity"):
            browser.route(route)
            assert browser.driver.title != "pwned"
            assert not browser.css("#content img, #charts img")
            assert payload in browser.one("#content").text or payload[:60] in browser.one("#main").text
        rows = browser.table()
        assert any(r.get("user") == payload for r in rows)
