"""The console in a real headless Chromium: access (login page, cookie, 401s, CSP, hostile text)
and the five views after a real agent run (journald lines, a Websh session with a recording, an
``exec``, an sftp transfer and logins through a real sshd). Screenshots go to artifacts/screenshots."""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser
from tests.harness import TOKEN, ReceiverProcess, _http
from tests.support import need, need_binary, need_root, wait_until

LOGIN_TIMEOUT = 20


def post_batch(receiver: ReceiverProcess, events: list[dict[str, Any]]) -> Any:
    batch = {
        "schema": 1,
        "agent": {"id": "agent-console", "server": "web-01", "hostname": "web-01", "version": "0.1.0"},
        "batch_id": "batch-" + secrets.token_hex(6),
        "sent_at": "2026-12-01T20:00:00.000Z",
        "events": events,
    }
    return _http("POST", receiver.ingest_url, batch)


def login(b: Browser, receiver: ReceiverProcess, token: str = TOKEN) -> None:
    b.get(receiver.url + "/")
    wait_until(lambda: b.css("#token"), LOGIN_TIMEOUT, what="the login form")
    b.one("#token").send_keys(token)
    b.one("#login-button").click()


def raw(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
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
            "const done = arguments[0]; fetch('/api/v1/system-logs').then(r => done(r.status));"
        )
        assert status == 401
        browser.shot("login")

    def test_wrong_token_is_refused(self, receiver: ReceiverProcess, browser: Browser) -> None:
        """A wrong token gives the login page again with a note, and no cookie."""
        login(browser, receiver, "wrong-" + TOKEN)
        wait_until(
            lambda: browser.css("#login-failed") and browser.one("#login-failed").is_displayed(),
            10,
            what="the refusal note",
        )
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
            "const done = arguments[0]; fetch('/api/v1/system-logs').then(r => done(r.status));"
        )
        assert status == 200
        ingest = browser.driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/v1/agent/events', {method: 'POST', body: '{}',"
            " headers: {'Content-Type': 'application/json'}}).then(r => done(r.status));"
        )
        assert ingest == 401
        faults = browser.driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/v1/_faults').then(r => done(r.status));"
        )
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
        status, headers, _ = raw(
            "POST", receiver.url + "/console/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
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
        status, headers, body = raw(
            "POST",
            receiver.url + "/console/login",
            form,
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
        )
        assert status == 403 and "Set-Cookie" not in headers
        for forged in ("x", "A" * 43, "", "../../etc/passwd"):
            status, _, _ = raw(
                "GET", receiver.url + "/api/v1/system-logs", headers={"Cookie": f"alpacon_console={forged}"}
            )
            assert status == 401
        status, _, _ = raw(
            "POST",
            receiver.url + "/console/login",
            b"token=" + b"A" * 10_000,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 413

    def test_static_files_stay_in_their_folder(self, receiver: ReceiverProcess) -> None:
        """Path tricks on the static route find nothing outside static/."""
        for path in (
            "../__init__.py",
            "..%2f__init__.py",
            "%2e%2e/%2e%2e/app.py",
            "vendor/../../__init__.py",
            "index.html",
        ):
            status, _, body = raw("GET", receiver.url + "/console/static/" + path)
            assert status == 404, (path, status)
        status, headers, _ = raw("GET", receiver.url + "/console/static/console.js")
        assert status == 200 and "Content-Security-Policy" in headers

    def test_hostile_text_is_shown_as_text(self, receiver: ReceiverProcess, browser: Browser) -> None:
        """A log message and a user name made of HTML and script are shown literally and run nothing."""
        payload = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
        post_batch(
            receiver,
            [
                {
                    "id": "ev-hostile-1",
                    "kind": "system_log",
                    "ts": "2026-12-01T20:00:00.000Z",
                    "server": "web-01",
                    "data": {"program": "evil", "level": "error", "pid": 1, "message": payload},
                },
                {
                    "id": "ev-hostile-2",
                    "kind": "user_activity",
                    "ts": "2026-12-01T20:00:00.000Z",
                    "server": "web-01",
                    "data": {"user": payload, "ip": "203.0.113.9", "action": "login", "result": 200},
                },
            ],
        )
        login(browser, receiver)
        browser.ready()
        for route in ("#/logs", "#/activity"):
            browser.route(route)
            assert browser.driver.title != "pwned"
            assert not browser.css("#content img, #charts img")
            assert payload in browser.one("#content").text or payload[:60] in browser.one("#main").text
        rows = browser.table()
        assert any(r.get("user") == payload for r in rows)


# -- the views after a real agent run -------------------------------------------------------------


@pytest.fixture(scope="module")
def console_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A journald with an sshd logging to it, and its throwaway users (tests/test_openssh.py)."""
    from tests.test_openssh import SFTP_SERVER, SSHD, SshLab

    need_root()
    need(os.access(SSHD, os.X_OK), "OpenSSH server (openssh-server)")
    need(os.access(SFTP_SERVER, os.X_OK), "sftp-server (openssh-sftp-server)")
    for b in ("sshpass", "ssh", "sftp", "nsenter", "unshare", "bash"):
        need_binary(b)
    lab = SshLab(tmp_path_factory.mktemp("consolelab"))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def run_everything(lab: Any, agent: Any, receiver: ReceiverProcess, tmp: Path) -> dict[str, Any]:
    """One of each: journald lines, a login and an sftp upload through sshd, an ``exec`` and a
    recorded Websh session; returns what was done, once all of it is in the receiver."""
    from tests.test_websh_e2e import agent_session

    tag = secrets.token_hex(3)
    lines = [f"console-line-{tag}-{i}" for i in range(3)]
    lab.journald.logger(*lines, tag="console-test", priority="user.warning")
    u = lab.ssh_user
    assert lab.ssh_password(u.name, u.password) == 0
    (tmp / "upload.bin").write_bytes(b"x" * 4321)
    lab.sftp(u.name, f"put {tmp / 'upload.bin'} console-{tag}.bin\n")
    r = agent.cli("exec", "--operator", "auditor@example.com", "--", "echo", f"exec-{tag}")
    assert r.returncode == 0, r.stderr
    sid = f"console-{tag}"
    cast = tmp / "session.cast"
    s = agent_session(tmp, agent, sid, [need_binary("bash")], "--record-io", str(cast))
    s.prompt()
    s.run(f"echo websh-{tag}")
    s.child.send("exit\r")
    assert s.finish() == 0
    want = {
        "system-logs": lambda: receiver.view("system-logs", program="console-test"),
        "webftp-transfers": lambda: [
            x for x in receiver.view("webftp-transfers", username=u.name) if x["object_name"] == f"console-{tag}.bin"
        ],
        "commands": lambda: [
            x
            for x in receiver.view("commands")
            if x.get("line", "").endswith(f"exec-{tag}") and x.get("status") == "success"
        ],
        "websh-sessions": lambda: [
            x
            for x in receiver.view("websh-sessions", session_id=sid)
            if x.get("state") == "closed" and x.get("commands")
        ],
        "user-activity": lambda: [x for x in receiver.view("user-activity", user=u.name) if x["action"] == "login"],
    }
    for name, rows in want.items():
        try:
            wait_until(rows, 90, what=f"{name} rows at the receiver")
        except AssertionError:
            raise AssertionError(
                f"no {name} rows; stored: {receiver.stats().get('stored_by_kind')}; agent log:"
                f" {agent.log_path.read_text()[-3000:]}"
            ) from None
    wait_until(lambda: len(want["system-logs"]()) == 3, 30, what="the three journald lines")
    wait_until(
        lambda: (
            raw("GET", f"{receiver.url}/api/v1/websh-recordings/{sid}", headers={"Authorization": f"Bearer {TOKEN}"})[0]
            == 200
        ),
        60,
        what="the session's recording at the receiver",
    )
    return {"tag": tag, "sid": sid, "user": u.name, "lines": lines}


class TestConsoleViews:
    """Each view lists what a real agent run collected, with the view's columns."""

    def test_views_after_a_real_run(
        self, console_lab: Any, agent_factory: Any, receiver: ReceiverProcess, browser: Browser, tmp_path: Path
    ) -> None:
        """Logs, a Websh session (Record and playback), an exec, an sftp upload and a login, in the browser."""
        lab = console_lab
        agent = agent_factory(
            receiver,
            collectors={
                "journald": {"enabled": True, "directory": str(lab.journald.journal_dir), "start_at": "beginning"},
                "auth": {"enabled": True},
                "sftp": {"enabled": True},
                "commands": {"enabled": True},
                "metrics": {"enabled": True, "interval_s": 1},
            },
        )
        agent.start()
        done = run_everything(lab, agent, receiver, tmp_path)
        tag, sid = done["tag"], done["sid"]
        login(browser, receiver)
        browser.ready()

        # System logs: the columns, level colour, and the metadata behind a row
        browser.route("#/logs?program=console-test")
        assert browser.headers() == ["Server", "Program", "Level", "PID", "Message", "Date"]
        rows = browser.table()
        assert sorted(r["message"] for r in rows) == sorted(done["lines"])
        assert all(r["server"] == "test-server" and r["level"] == "warning" and r["pid"].isdigit() for r in rows)
        assert all("lvl-warning" in td.get_attribute("class") for td in browser.css('td[data-col="level"]'))
        browser.one("table.rows tbody tr.row").click()
        detail = browser.one("tr.detail").text
        assert "Facility" in detail and "Extra" in detail
        browser.shot("system-logs")

        # Websh history and a session's detail: metadata, Record, playback
        browser.route("#/websh")
        assert browser.headers() == [
            "Server",
            "Username",
            "Groupname",
            "Duration",
            "Operator",
            "Browser",
            "Remote IP",
            "Date",
        ]
        api_session = receiver.view("websh-sessions", session_id=sid)[0]
        row = next(r for r in browser.table() if r["operator"] == api_session["operator"])
        assert row["remote_ip"] == api_session["remote_ip"] and row["browser"] == api_session["browser"]
        browser.shot("websh-history")
        browser.route(f"#/websh/{sid}")
        record = browser.table("#record")
        assert any(r["command"] == f"echo websh-{tag}" and r["exit_code"] == "0" for r in record), record
        wait_until(lambda: browser.css("#player .ap-player, #player .ap-wrapper"), 20, what="the asciinema player")
        duration = wait_until(
            lambda: browser.driver.execute_async_script(
                "const done = arguments[0]; Promise.resolve(window.castPlayer.getDuration()).then(done, () => "
                "done(null));"
            ),
            20,
            what="the recording's duration in the player",
        )
        assert duration > 0, duration
        browser.driver.execute_script("window.castPlayer.play()")
        wait_until(
            lambda: f"websh-{tag}" in browser.one("#player").get_attribute("textContent"),
            20,
            what="the recorded output on the player's screen",
        )
        browser.shot("websh-session")

        # Command history: the columns, and the output behind a row
        browser.route("#/commands?shell=system")
        assert browser.headers() == ["Server", "Shell", "Line", "Result", "Operator", "Status", "Date"]
        rows = [r for r in browser.table() if r["line"].endswith(f"exec-{tag}")]
        assert rows and rows[0]["status"] == "success" and rows[0]["operator"] == "auditor@example.com"
        next(tr for tr in browser.css("table.rows tbody tr.row") if f"exec-{tag}" in tr.text).click()
        assert f"exec-{tag}" in browser.one("tr.detail pre.output").text
        browser.shot("command-history")

        # WebFTP history
        browser.route(f"#/webftp?username={done['user']}")
        assert browser.headers() == [
            "Server",
            "Username",
            "Groupname",
            "Type",
            "Object name",
            "Size",
            "Remote IP",
            "Date",
        ]
        rows = [r for r in browser.table() if r["object_name"] == f"console-{tag}.bin"]
        assert rows and rows[0]["type"] == "upload" and rows[0]["size"] == "4.2 KiB"
        next(tr for tr in browser.css("table.rows tbody tr.row") if f"console-{tag}.bin" in tr.text).click()
        assert f"/console-{tag}.bin" in browser.one("tr.detail").text and "success" in browser.one("tr.detail").text
        browser.shot("webftp-history")

        # User activity: bars whose counts match the API, and a click that filters the table
        browser.route("#/activity")
        summary = receiver.get("/api/v1/user-activity/summary")
        bars: Counter[tuple[Any, ...]] = Counter()
        for bar in browser.css("#activity-hours .bar"):
            bars[
                (
                    bar.get_attribute("data-hour"),
                    bar.get_attribute("data-action"),
                    int(bar.get_attribute("data-result")),
                )
            ] += int(bar.get_attribute("data-count"))
        assert bars == Counter({(h["hour"], h["action"], h["result"]): h["count"] for h in summary["hours"]})
        api_counts: Counter[tuple[Any, ...]] = Counter()
        for r in receiver.view("user-activity"):
            api_counts[(r["ts"][:13] + ":00:00.000Z", r["action"], r["result"])] += 1
        assert bars == api_counts
        users = {
            e.get_attribute("data-key"): int(e.get_attribute("data-count")) for e in browser.css("#top-users .hbar")
        }
        assert users[done["user"]] == sum(1 for r in receiver.view("user-activity") if r["user"] == done["user"])
        browser.shot("user-activity")
        login_bar = next(b for b in browser.css("#activity-hours .bar") if b.get_attribute("data-action") == "login")
        expected = int(login_bar.get_attribute("data-count"))
        browser.driver.execute_script("document.body.dataset.ready = ''")
        login_bar.click()
        browser.ready()
        rows = browser.table()
        assert len(rows) == expected and all(r["action"] == "login" for r in rows)

        # System signs
        browser.route("#/signs")
        wait_until(lambda: browser.css(".chart.signs"), 20, what="a server's system signs")
        assert browser.one(".chart.signs").get_attribute("data-server") == "test-server"
        assert browser.css(".chart.signs canvas")  # uPlot drew its charts
        browser.shot("system-signs")
        agent.stop()
