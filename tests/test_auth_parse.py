"""Parser tests of the auth deriver: real-looking sshd, sudo, su, login and pam_unix lines
from Debian and RHEL-family systems, and garbage that must yield nothing."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import parse_config
from agent.events import stable_id
from agent.schema import validate_data
from collectors.derivers import build_derivers
from collectors.derivers.auth import AuthDeriver
from collectors.derivers.base import OriginFilter, auth_file_paths, event_origin
from collectors.derivers.provenance import RULES
from tests.senders import sender

TS = "2026-11-26T20:00:00.000Z"


def line(program: str, message: str, pid: int | None = 812, id: str = "jd-0001", **data: Any) -> dict[str, Any]:
    """A journal line sent by the real ``program`` (see tests.senders), unless ``extra`` says otherwise."""
    if "extra" not in data and isinstance(program, str) and program in RULES:
        data["extra"] = {"sender": sender(program, pid=pid or 812)}
    elif "extra" not in data and isinstance(message, str) and message.startswith("pam_unix("):
        # another PAM service (vsftpd …): its root daemon
        data["extra"] = {
            "sender": {
                "uid": 0,
                "pid": pid,
                "comm": program,
                "exe": f"/usr/sbin/{program}",
                "cap_effective": "1ffffffffff",
                "transport": "syslog",
            }
        }
    return {
        "id": id,
        "kind": "system_log",
        "ts": TS,
        "data": {"program": program, "level": "info", "pid": pid, "message": message, **data},
    }


def derive(d: AuthDeriver, program: str, message: str, **kw: Any) -> dict[str, Any] | None:
    out = d(line(program, message, **kw))
    assert len(out) <= 1
    if not out:
        return None
    ev = out[0]
    assert ev["kind"] == "user_activity"
    validate_data("user_activity", ev["data"])
    return ev["data"]


def key(row: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if row is None else (row["user"], row["ip"], row["action"], row["result"])


# (program, message, expected (user, ip, action, result)) — Debian 12 / Ubuntu and RHEL 7-9 lines
CASES = [
    # sshd, both families
    ("sshd", "Accepted password for alice from 192.0.2.10 port 52144 ssh2", ("alice", "192.0.2.10", "login", 200)),
    (
        "sshd",
        "Accepted publickey for deploy from 10.0.0.5 port 40022 ssh2: RSA SHA256:Zm9vYmFyYmF6cXV4",
        ("deploy", "10.0.0.5", "login", 200),
    ),
    (
        "sshd",
        "Accepted publickey for alice from 2001:db8::7 port 40022 ssh2: ED25519 SHA256:abc",
        ("alice", "2001:db8::7", "login", 200),
    ),
    (
        "sshd",
        "Accepted keyboard-interactive/pam for bob from 198.51.100.3 port 6000 ssh2",
        ("bob", "198.51.100.3", "login", 200),
    ),
    (
        "sshd",
        "Accepted gssapi-with-mic for carol from 198.51.100.4 port 6001 ssh2",
        ("carol", "198.51.100.4", "login", 200),
    ),
    (
        "sshd-session",
        "Accepted password for alice from 192.0.2.10 port 52144 ssh2",
        ("alice", "192.0.2.10", "login", 200),
    ),
    (
        "sshd",
        "Failed password for alice from 203.0.113.9 port 22022 ssh2",
        ("alice", "203.0.113.9", "login_failed", 401),
    ),
    (
        "sshd",
        "Failed password for invalid user admin from 203.0.113.9 port 22022 ssh2",
        ("admin", "203.0.113.9", "login_failed", 401),
    ),
    (
        "sshd",
        "Failed publickey for root from 203.0.113.9 port 22 ssh2: RSA SHA256:xyz",
        ("root", "203.0.113.9", "login_failed", 401),
    ),
    (
        "sshd",
        "Failed keyboard-interactive/pam for invalid user test from 203.0.113.9 port 5 ssh2",
        ("test", "203.0.113.9", "login_failed", 401),
    ),
    ("sshd", "Invalid user oracle from 203.0.113.9 port 40000", ("oracle", "203.0.113.9", "invalid_user", 401)),
    ("sshd", "Invalid user oracle from 203.0.113.9", ("oracle", "203.0.113.9", "invalid_user", 401)),  # RHEL 7
    ("sshd", "Invalid user  from 203.0.113.9 port 40000", None),  # empty user name
    (
        "sshd",
        "User root from 203.0.113.9 not allowed because not listed in AllowUsers",
        ("root", "203.0.113.9", "login_failed", 403),
    ),
    (
        "sshd",
        "User bob from 203.0.113.9 not allowed because listed in DenyUsers",
        ("bob", "203.0.113.9", "login_failed", 403),
    ),
    ("sshd", "Disconnected from user alice 192.0.2.10 port 52144", ("alice", "192.0.2.10", "logout", 200)),
    # sshd lines that are not a row of their own
    ("sshd", "Failed none for invalid user admin from 203.0.113.9 port 22022 ssh2", None),
    ("sshd", "Connection closed by authenticating user alice 203.0.113.9 port 22022 [preauth]", None),
    ("sshd", "Disconnected from invalid user admin 203.0.113.9 port 22022 [preauth]", None),
    ("sshd", "Disconnected from authenticating user alice 203.0.113.9 port 22 [preauth]", None),
    ("sshd", "Received disconnect from 192.0.2.10 port 52144:11: disconnected by user", None),
    ("sshd", "Server listening on 0.0.0.0 port 22.", None),
    (
        "sshd",
        "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.9  "
        "user=alice",
        None,
    ),
    ("sshd", "pam_unix(sshd:auth): check pass; user unknown", None),
    ("sshd", "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)", None),
    ("sshd", "pam_unix(sshd:session): session opened for user alice by (uid=0)", None),  # RHEL 7
    # too many keys offered: no "Failed" line per key, so the end of it is the row
    (
        "sshd",
        "error: maximum authentication attempts exceeded for root from 203.0.113.9 port 22 ssh2 [preauth]",
        ("root", "203.0.113.9", "login_failed", 401),
    ),
    ("sshd", "Postponed keyboard-interactive for alice from 192.0.2.1 port 22 ssh2 [preauth]", None),
    # sudo 1.8 (RHEL 7/8) and 1.9 (Debian 12, RHEL 9)
    (
        "sudo",
        "   alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update",
        ("alice", None, "sudo", 200),
    ),
    (
        "sudo",
        "alice : TTY=pts/1 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx",
        ("alice", None, "sudo", 200),
    ),
    (
        "sudo",
        "alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id",
        ("alice", None, "sudo", 401),
    ),
    (
        "sudo",
        "alice : 1 incorrect password attempt ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id",
        ("alice", None, "sudo", 401),
    ),
    (
        "sudo",
        "bob : user NOT in sudoers ; TTY=pts/0 ; PWD=/home/bob ; USER=root ; COMMAND=/bin/bash",
        ("bob", None, "sudo", 403),
    ),
    (
        "sudo",
        "alice : command not allowed ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/cat /etc/shadow",
        ("alice", None, "sudo", 403),
    ),
    (
        "sudo",
        "alice : a password is required ; TTY=unknown ; PWD=/ ; USER=root ; COMMAND=/usr/bin/id",
        ("alice", None, "sudo", 401),
    ),
    (
        "sudo",
        "pam_unix(sudo:auth): authentication failure; logname=alice uid=1000 euid=0 tty=/dev/pts/0 ruser=alice "
        "rhost=  user=alice",
        None,
    ),
    ("sudo", "pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)", None),
    ("sudo", "pam_unix(sudo-i:session): session closed for user root", None),
    ("sudo", "unable to resolve host web-01: Name or service not known", None),
    # su: util-linux (Debian 10+, RHEL 8+) and shadow (older Debian)
    ("su", "(to root) alice on pts/0", ("alice", None, "su", 200)),
    ("su", "FAILED SU (to root) alice on pts/0", ("alice", None, "su", 401)),
    ("su", "Successful su for root by alice", ("alice", None, "su", 200)),
    ("su", "FAILED su for root by alice", ("alice", None, "su", 401)),
    ("su", "+ pts/0 alice:root", None),
    ("su", "pam_unix(su:session): session opened for user root(uid=0) by alice(uid=1000)", None),
    ("su", "pam_unix(su-l:session): session opened for user root by alice(uid=1000)", None),  # RHEL
    (
        "su",
        "pam_unix(su:auth): authentication failure; logname=alice uid=1000 euid=0 tty=pts/0 ruser=alice rhost=  "
        "user=root",
        None,
    ),
    # login: shadow (Debian) and util-linux (RHEL)
    (
        "login",
        "FAILED LOGIN (1) on '/dev/tty1' FOR 'alice', Authentication failure",
        ("alice", None, "login_failed", 401),
    ),
    ("login", "FAILED LOGIN 1 FROM tty1 FOR alice, Authentication failure", ("alice", None, "login_failed", 401)),
    (
        "login",
        "pam_unix(login:session): session opened for user alice(uid=1000) by LOGIN(uid=0)",
        ("alice", None, "login", 200),
    ),
    ("login", "pam_unix(login:session): session closed for user alice", ("alice", None, "logout", 200)),
    ("login", "ROOT LOGIN  on '/dev/tty1'", ("root", None, "login", 200)),
    # other PAM services: sessions; cron and systemd-user are noise
    (
        "vsftpd",
        "pam_unix(vsftpd:session): session opened for user ftpuser(uid=1005) by (uid=0)",
        ("ftpuser", None, "login", 200),
    ),  # an FTP server's session is a login
    ("CRON", "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)", None),
    ("crond", "pam_unix(crond:session): session closed for user root", None),  # RHEL
    ("systemd", "pam_unix(systemd-user:session): session opened for user alice(uid=1000) by (uid=0)", None),
]


class TestAuthDeriver:
    @pytest.mark.parametrize(("program", "message", "expected"), CASES, ids=[f"{c[0]}:{c[1][:40]}" for c in CASES])
    def test_line(self, program: str, message: str, expected: tuple[Any, ...] | None) -> None:
        """Each real-looking line gives exactly the expected row, or nothing."""
        assert key(derive(AuthDeriver(), program, message)) == expected

    def test_details_of_sudo(self) -> None:
        """A sudo line keeps the command (even one containing ' ; '), target user, tty and cwd."""
        row = derive(
            AuthDeriver(), "sudo", "alice : TTY=pts/0 ; PWD=/srv ; USER=postgres ; COMMAND=/bin/sh -c echo a ; echo b"
        )
        assert row is not None
        d = row["details"]
        assert (d["command"], d["target_user"], d["tty"], d["cwd"]) == (
            "/bin/sh -c echo a ; echo b",
            "postgres",
            "pts/0",
            "/srv",
        )

    def test_details_of_ssh_login(self) -> None:
        """An sshd login carries the method, port and key fingerprint."""
        row = derive(
            AuthDeriver(), "sshd", "Accepted publickey for alice from 10.0.0.5 port 40022 ssh2: ED25519 SHA256:abc"
        )
        assert row is not None
        assert row["details"]["method"] == "publickey"
        assert row["details"]["port"] == 40022
        assert row["details"]["key"] == "ED25519 SHA256:abc"

    def test_su_target(self) -> None:
        """su rows name the target user."""
        row = derive(AuthDeriver(), "su", "FAILED SU (to postgres) alice on pts/3")
        assert row is not None and row["details"]["target_user"] == "postgres"

    def test_logout_once_per_connection(self) -> None:
        """The 'Disconnected from user' line and the monitor's pam 'session closed' give one logout."""
        d = AuthDeriver()
        assert key(derive(d, "sshd", "Accepted password for alice from 192.0.2.10 port 5000 ssh2", pid=100, id="jd-1"))
        assert key(derive(d, "sshd", "Disconnected from user alice 192.0.2.10 port 5000", pid=101, id="jd-2")) == (
            "alice",
            "192.0.2.10",
            "logout",
            200,
        )
        assert derive(d, "sshd", "pam_unix(sshd:session): session closed for user alice", pid=100, id="jd-3") is None

    def test_logout_from_pam_gets_the_address(self) -> None:
        """Without a Disconnected line (UsePAM, connection dropped) the pam line is the logout, with the IP."""
        d = AuthDeriver()
        derive(d, "sshd", "Accepted password for alice from 192.0.2.10 port 5000 ssh2", pid=100, id="jd-1")
        row = derive(d, "sshd", "pam_unix(sshd:session): session closed for user alice", pid=100, id="jd-3")
        assert key(row) == ("alice", "192.0.2.10", "logout", 200)
        assert derive(d, "sshd", "Disconnected from user alice 192.0.2.10 port 5000", pid=101, id="jd-2") is None

    def test_ids_are_deterministic(self) -> None:
        """The row id derives from the source line id: re-reading a line gives the same id."""
        ev = line("sshd", "Failed password for alice from 203.0.113.9 port 22 ssh2", id="jd-abc")
        a, b = AuthDeriver()(ev), AuthDeriver()(ev)
        assert a[0]["id"] == b[0]["id"] == stable_id("ua", "jd-abc")
        assert a[0]["ts"] == TS

    def test_hostile_user_cannot_move_the_address(self) -> None:
        """A user name that contains ' from X port N' does not replace the real client address."""
        row = derive(AuthDeriver(), "sshd", "Invalid user x from 10.9.9.9 port 1 from 203.0.113.9 port 40000")
        assert row is not None and row["ip"] == "203.0.113.9"
        assert row["user"] == "x from 10.9.9.9 port 1"

    def test_hostname_instead_of_address(self) -> None:
        """With UseDNS the 'address' is a host name: ip stays empty and the name goes to details."""
        row = derive(AuthDeriver(), "sshd", "Failed password for alice from gw.example.net port 22 ssh2")
        assert row is not None and row["ip"] is None and row["details"]["host"] == "gw.example.net"

    @pytest.mark.parametrize(
        "message",
        [
            "",
            " ",
            "Accepted",
            "Accepted password for",
            "Failed password for alice from",
            "alice : ",
            "\x00\x01\x02 garbage",
            "(to ) on ",
            "FAILED SU (to root)",
            "pam_unix(sshd:session): session opened for user",
            "\udcff\udcfe invalid utf-8",
            "Accepted password for alice from 192.0.2.1 port 99999999 ssh2 trailing",
        ],
    )
    @pytest.mark.parametrize("program", ["sshd", "sudo", "su", "login"])
    def test_garbage_yields_nothing(self, program: str, message: str) -> None:
        """Garbage lines give no row rather than a wrong one."""
        assert AuthDeriver()(line(program, message)) == []

    def test_oversize_and_wrong_types(self) -> None:
        """A 10 MB line, a non-string message, a missing program or another kind give nothing."""
        d = AuthDeriver()
        assert d(line("sshd", "Accepted password for " + "a" * 10_000_000 + " from 1.2.3.4 port 1 ssh2")) == []
        assert d(line("sshd", 12345)) == []  # type: ignore[arg-type]
        assert (
            d(
                {
                    "id": "x",
                    "kind": "system_log",
                    "ts": TS,
                    "data": {"message": "Accepted password for a from 1.2.3.4 port 1 ssh2"},
                }
            )
            == []
        )
        assert d({"kind": "metrics", "ts": TS, "data": {}}) == []
        assert d({"kind": "system_log"}) == []  # type: ignore[typeddict-item]

    def test_long_user_is_clipped(self) -> None:
        """An over-long (hostile) user name is clipped to the schema's limit and flagged."""
        row = derive(AuthDeriver(), "sshd", "Invalid user " + "u" * 1000 + " from 203.0.113.9 port 1")
        assert row is not None and len(row["user"]) <= 256 and row["details"]["user_truncated"] is True

    def test_control_characters_are_neutralised(self) -> None:
        """Control characters in a sudo command cannot forge lines in the details."""
        row = derive(AuthDeriver(), "sudo", "alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/echo \x1b[2Jhi")
        assert row is not None and "\x1b" not in row["details"]["command"]

    def test_tracking_is_bounded(self) -> None:
        """Thousands of connections keep the per-connection memory at its cap."""
        d = AuthDeriver(max_tracked=100)
        for i in range(1000):
            d(
                line(
                    "sshd", f"Accepted password for u{i} from 192.0.2.1 port {i + 1} ssh2", pid=10_000 + i, id=f"jd-{i}"
                )
            )
        assert len(d._conn) <= 100


class TestDeriverOrigin:
    def test_origin_of_events(self) -> None:
        """Journald and file events are told apart by data.source or the id namespace."""
        assert event_origin(line("sshd", "x", id="x-1", source="journald:system"))[0] == "journald"
        assert event_origin(line("sshd", "x", id="x-1", source="/var/log/auth.log")) == ("file", "/var/log/auth.log")
        assert event_origin(line("sshd", "x", id="jd-1", source="/var/log/journal")) == ("journald", None)
        assert event_origin(line("sshd", "x", id="f-1", source="/var/log/secure")) == ("file", "/var/log/secure")
        assert event_origin(line("sshd", "x", id="f-123"))[0] == "file"
        assert event_origin(line("sshd", "x", id="jd-123"))[0] == "journald"

    def test_never_both_twice(self) -> None:
        """With journald as the origin, the same line read from auth.log gives no second row."""
        d = AuthDeriver(accept=OriginFilter("journald", ["/var/log/auth.log"]))
        msg = "Accepted password for alice from 192.0.2.10 port 52144 ssh2"
        assert len(d(line("sshd", msg, id="jd-1", source="journald:system"))) == 1
        assert d(line("sshd", msg, id="f-1", source="/var/log/auth.log")) == []

    def test_file_origin_only_auth_paths(self) -> None:
        """With files as the origin and the auth log named in the config, only its paths count
        (not a catch-all /var/log/syslog's copies)."""
        d = AuthDeriver(accept=OriginFilter("file", ["/var/log/auth.log", "/var/log/secure"], named=True))
        msg = "Accepted password for alice from 192.0.2.10 port 52144 ssh2"
        assert len(d(line("sshd", msg, id="f-1", source="/var/log/secure"))) == 1
        assert d(line("sshd", msg, id="f-2", source="/var/log/syslog")) == []
        assert d(line("sshd", msg, id="jd-2", source="journald:system")) == []

    def test_any_file_unless_the_auth_log_is_named(self) -> None:
        """Without auth.paths in the config, a copied old auth log read as a syslog file yields its
        rows, whichever origin; the host's own auth log does not while the journal is the origin;
        the FTP transfer logs always do."""
        msg = "Accepted password for alice from 192.0.2.10 port 52144 ssh2"
        for origin in ("file", "journald"):
            d = AuthDeriver(accept=OriginFilter(origin, ["/var/log/auth.log", "/var/log/secure"]))  # type: ignore[arg-type]
            assert len(d(line("sshd", msg, id="f-1", source="/srv/old/secure-2019"))) == 1
            own = d(line("sshd", msg, id="f-2", source="/var/log/auth.log"))
            assert len(own) == (1 if origin == "file" else 0)
        f = OriginFilter("file", ["/var/log/secure"], named=True, always=["/var/log/xferlog"])
        assert f(line("xferlog", "1 h 1 /a b _ o r u ftp 0 * c", id="f-3", source="/var/log/xferlog"))
        assert not f(line("xferlog", "1 h 1 /a b _ o r u ftp 0 * c", id="f-4", source="/var/log/other"))

    def test_build_derivers(self, tmp_path: Any) -> None:
        """build_derivers returns the enabled derivers; auth_file_paths names the files to tail."""
        auth = tmp_path / "auth.log"
        auth.write_text("")
        cfg = parse_config(
            {
                "collectors": {
                    "journald": {"enabled": False},
                    "sftp": {"enabled": False},
                    "auth": {"paths": [str(auth), str(tmp_path / "secure")]},
                }
            }
        )
        names = [d.name for d in build_derivers(cfg)]  # type: ignore[attr-defined]
        assert names == ["auth", "ftp"]
        assert auth_file_paths(cfg) == [str(auth)]
        cfg2 = parse_config({"collectors": {"journald": {"enabled": True}}})
        assert sorted(d.name for d in build_derivers(cfg2)) == ["auth", "ftp", "sftp"]  # type: ignore[attr-defined]
        assert auth_file_paths(cfg2) == []
        cfg3 = parse_config(
            {"collectors": {"auth": {"enabled": False}, "sftp": {"enabled": False}, "ftp": {"enabled": False}}}
        )
        assert build_derivers(cfg3) == []


class TestForgedLines:
    def _event(
        self,
        program: str,
        message: str,
        sender: dict[str, Any] | None,
        id: str = "jd-0123456789abcdef",
        source: str = "journald",
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"transport": "syslog"}
        if sender is not None:
            extra["sender"] = sender
        return {
            "id": id,
            "kind": "system_log",
            "ts": "2026-11-26T20:00:00.000Z",
            "data": {
                "program": program,
                "pid": 812,
                "level": "info",
                "message": message,
                "hostname": "web-01",
                "source": source,
                "extra": extra,
            },
        }

    def test_only_a_fitting_sender_makes_a_row(self) -> None:
        """An sshd line sent by logger (any uid) or with no sender yields no row; the same line
        from the real sshd does, and says who vouched for it."""
        from tests.senders import user_tool

        d = AuthDeriver()
        line = "Accepted password for root from 203.0.113.9 port 50022 ssh2"
        assert d(self._event("sshd", line, user_tool(uid=65534), id="jd-1")) == []
        assert d(self._event("sshd", line, user_tool(uid=0, cap_effective="1ffffffffff"), id="jd-2")) == []
        assert d(self._event("sshd", line, None, id="jd-3")) == []
        assert d(self._event("sshd", line, None, id="jd-3")) == []  # the same line again counts once
        assert d.witness.forged == {"sshd": 3}
        rows = d(self._event("sshd", line, sender("sshd")))
        assert [(r["data"]["user"], r["data"]["ip"], r["data"]["result"]) for r in rows] == [
            ("root", "203.0.113.9", 200)
        ]
        prov = rows[0]["data"]["provenance"]
        assert prov["source"] == "journal" and prov["uid"] == 0 and prov["exe"] == sender("sshd").get("exe")
        validate_data("user_activity", rows[0]["data"])

    def test_file_lines_say_so(self) -> None:
        """A line read from an auth log file carries no sender: its row says provenance.source file."""
        rows = AuthDeriver()(
            self._event(
                "sshd",
                "Accepted password for root from 203.0.113.9 port 1 ssh2",
                None,
                id="f-0123456789abcdef",
                source="/var/log/auth.log",
            )
        )
        assert rows[0]["data"]["provenance"] == {"source": "file", "path": "/var/log/auth.log"}
