"""Parser tests of the sftp deriver: sftp-server sessions at -l INFO and -l VERBOSE (lines as
OpenSSH 8/9 on Debian and RHEL write them), aborted transfers, errors and garbage."""

from __future__ import annotations

from typing import Any

import pytest

from agent.events import stable_id
from agent.schema import validate_data
from collectors.derivers.provenance import RULES
from collectors.derivers.sftp import SftpDeriver
from tests.senders import sender

USER = "root"  # a user that exists everywhere, for relative-path resolution


class Feeder:
    """Feeds numbered lines of one or more sftp-server processes into a deriver."""

    def __init__(self, d: SftpDeriver | None = None) -> None:
        self.d = d or SftpDeriver(lookup_user=lambda pid: None)
        self.n = 0
        # the ssh connections the sessions below belong to, accepted by a root sshd
        for n, (user, ip) in enumerate([(USER, "192.0.2.10"), ("nobody", "198.51.100.7")]):
            assert (
                self(f"Accepted publickey for {user} from {ip} port 5000{n} ssh2", pid=100 + n, program="sshd", uid=0)
                == []
            )

    def __call__(
        self, message: str, pid: int = 4242, program: str = "sftp-server", second: int = 0, uid: int | None = None
    ) -> list[dict[str, Any]]:
        """One line of ``program`` (pid ``pid``), sent as the real program would (as root: the
        sftp-server of a session of root, or the sshd monitor)."""
        self.n += 1
        who = sender(program if program in RULES else "sftp-server", uid=0 if uid is None else uid, pid=pid)
        ev = {
            "id": f"jd-{self.n:06d}",
            "kind": "system_log",
            "ts": f"2026-11-26T20:00:{second:02d}.000Z",
            "data": {
                "program": program,
                "level": "info",
                "pid": pid,
                "message": message,
                "hostname": "h",
                "extra": {"sender": who},
            },
        }
        out = self.d(ev)  # type: ignore[arg-type]
        for e in out:
            assert e["kind"] == "webftp_transfer"
            validate_data("webftp_transfer", e["data"])
        return out

    def rows(self, lines: list[str], **kw: Any) -> list[dict[str, Any]]:
        out = []
        for ln in lines:
            out += [e["data"] for e in self(ln, **kw)]
        return out


def brief(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["type"], r["path"], r["size"], r["status"])


OPEN = f"session opened for local user {USER} from [192.0.2.10]"
CLOSE = f"session closed for local user {USER} from [192.0.2.10]"


class TestSftpDeriver:
    def test_upload_and_download_info(self) -> None:
        """-l INFO: a written file is an upload, a read one a download, with the exact size."""
        f = Feeder()
        rows = f.rows(
            [
                OPEN,
                "sent status No such file",
                'open "/root/a.bin" flags WRITE,CREATE,TRUNCATE mode 0644',
                'close "/root/a.bin" bytes read 0 written 1048576',
                'open "/root/a.bin" flags READ mode 0666',
                'close "/root/a.bin" bytes read 1048576 written 0',
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [
            ("upload", "/root/a.bin", 1048576, "success"),
            ("download", "/root/a.bin", 1048576, "success"),
        ]
        assert all(r["username"] == USER and r["remote_ip"] == "192.0.2.10" for r in rows)
        assert rows[0]["object_name"] == "a.bin"

    def test_empty_file(self) -> None:
        """A zero-byte upload is an upload of size 0 (the open's flags tell the direction)."""
        rows = Feeder().rows(
            [
                OPEN,
                'open "/root/empty" flags WRITE,CREATE,TRUNCATE mode 0644',
                'close "/root/empty" bytes read 0 written 0',
            ]
        )
        assert [brief(r) for r in rows] == [("upload", "/root/empty", 0, "success")]

    def test_forced_close_is_failed(self) -> None:
        """A transfer cut midway (the client went away) is failed, with the partial size."""
        rows = Feeder().rows(
            [
                OPEN,
                'open "/root/big" flags WRITE,CREATE,TRUNCATE mode 0644',
                'forced close "/root/big" bytes read 0 written 262144',
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [("upload", "/root/big", 262144, "failed")]
        assert "forced close" in rows[0]["error"]

    def test_failed_open(self) -> None:
        """An open answered by an error status is a failed transfer with that error."""
        rows = Feeder().rows(
            [
                OPEN,
                "sent status Permission denied",
                'open "/etc/shadow" flags READ mode 0666',
                "sent status Permission denied",
                'open "/root/ok" flags READ mode 0666',
                'close "/root/ok" bytes read 5 written 0',
            ]
        )
        assert [brief(r) for r in rows] == [
            ("download", "/etc/shadow", 0, "failed"),
            ("download", "/root/ok", 5, "success"),
        ]
        assert rows[0]["error"] == "Permission denied"

    def test_failed_open_at_session_end(self) -> None:
        """A failed open that is the session's last request is reported when the session closes."""
        rows = Feeder().rows(
            [OPEN, 'open "/root/nope" flags WRITE,CREATE,TRUNCATE mode 0644', "sent status Permission denied", CLOSE]
        )
        assert [brief(r) for r in rows] == [("upload", "/root/nope", 0, "failed")]

    def test_error_during_transfer(self) -> None:
        """An error between open and close (disk full) makes the transfer failed, once."""
        rows = Feeder().rows(
            [
                OPEN,
                'open "/root/f" flags WRITE,CREATE,TRUNCATE mode 0644',
                "sent status Failure",
                'close "/root/f" bytes read 0 written 4096',
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [("upload", "/root/f", 4096, "failed")]
        assert rows[0]["error"] == "Failure"

    def test_scp_relative_paths(self) -> None:
        """scp (OpenSSH 9 over SFTP) names files relative to the home directory."""
        rows = Feeder().rows(
            [
                OPEN,
                "sent status No such file",
                'open "scp1" flags WRITE,CREATE mode 0644',
                'set "scp1" size 100000',
                'close "scp1" bytes read 0 written 100000',
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [("upload", "/root/scp1", 100000, "success")]

    def test_operations_verbose(self) -> None:
        """-l VERBOSE: remove/rename/mkdir/rmdir rows, an error status right after one marks it failed."""
        rows = Feeder().rows(
            [
                OPEN,
                "received client version 3",
                'realpath "."',
                'lstat name "/root/x"',
                'remove name "/root/x"',
                'lstat name "/root/nonexist"',
                "sent status No such file",
                'remove name "/root/nonexist"',
                "sent status No such file",
                'posix-rename old "/root/a" new "/root/b"',
                'mkdir name "/root/d" mode 0777',
                'rmdir name "/root/d"',
                'stat name "/root/zzz"',
                "sent status No such file",
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [
            ("remove", "/root/x", None, "success"),
            ("remove", "/root/nonexist", None, "failed"),
            ("rename", "/root/b", None, "success"),
            ("mkdir", "/root/d", None, "success"),
            ("rmdir", "/root/d", None, "success"),
        ]
        assert rows[2]["extra"]["old_path"] == "/root/a"

    def test_operations_info_ambiguous(self) -> None:
        """-l INFO: an error after a remove may be the next command's unlogged stat: no row is guessed."""
        counted: list[str] = []
        f = Feeder(SftpDeriver(lookup_user=lambda pid: None, counter=lambda name, n, **kw: counted.append(name)))
        rows = f.rows(
            [
                OPEN,
                'remove name "/root/up1"',
                "sent status No such file",
                'remove name "/root/nonexist"',
                "sent status No such file",
                'mkdir name "/root/d" mode 0777',
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [("mkdir", "/root/d", None, "success")]
        assert counted == ["ambiguous_status", "ambiguous_status"]

    def test_interleaved_sessions(self) -> None:
        """Two sftp-server processes at once are kept apart by pid."""
        f = Feeder()
        f(OPEN, pid=1)
        f("session opened for local user nobody from [198.51.100.7]", pid=2)
        f('open "/srv/a" flags WRITE,CREATE,TRUNCATE mode 0644', pid=1)
        f('open "/srv/b" flags READ mode 0666', pid=2)
        b = f('close "/srv/b" bytes read 7 written 0', pid=2)
        a = f('close "/srv/a" bytes read 0 written 9', pid=1)
        assert (a[0]["data"]["username"], a[0]["data"]["type"], a[0]["data"]["size"]) == (USER, "upload", 9)
        assert (b[0]["data"]["username"], b[0]["data"]["type"], b[0]["data"]["remote_ip"]) == (
            "nobody",
            "download",
            "198.51.100.7",
        )

    def test_internal_sftp(self) -> None:
        """internal-sftp logs the same lines under its own name."""
        rows = Feeder().rows(
            [OPEN, 'open "/root/i" flags READ mode 0666', 'close "/root/i" bytes read 3 written 0'],
            program="internal-sftp",
        )
        assert [brief(r) for r in rows] == [("download", "/root/i", 3, "success")]

    def test_ids_and_duration(self) -> None:
        """A row's id is derived from its completing line; duration runs from open to close."""
        f = Feeder()
        f(OPEN, second=0)
        f('open "/root/a" flags WRITE,CREATE,TRUNCATE mode 0644', second=1)
        out = f('close "/root/a" bytes read 0 written 1', second=4)
        assert out[0]["id"] == stable_id("ftp", f"jd-{f.n:06d}")
        assert out[0]["data"]["duration_ms"] == 3000
        assert out[0]["ts"] == "2026-11-26T20:00:04.000Z"

    def test_unknown_session_user_from_process(self) -> None:
        """A session begun before the agent started takes its user from the live process."""
        f = Feeder(SftpDeriver(lookup_user=lambda pid: "alice" if pid == 77 else None))
        rows = f.rows(
            ['open "/home/alice/a" flags READ mode 0666', 'close "/home/alice/a" bytes read 3 written 0'], pid=77
        )
        assert rows[0]["username"] == "alice" and rows[0]["remote_ip"] is None

    def test_unknown_session_without_process_yields_nothing(self) -> None:
        """A session whose user cannot be known gives no row (not one with a guessed user)."""
        counted: list[str] = []
        f = Feeder(SftpDeriver(lookup_user=lambda pid: None, counter=lambda name, n, **kw: counted.append(name)))
        assert f.rows(['open "/x" flags READ mode 0666', 'close "/x" bytes read 3 written 0']) == []
        assert counted == ["orphan_line"]

    def test_hostile_paths(self) -> None:
        """Quotes, spaces and a 10 kB name in a path are kept (clipped to the schema's limit)."""
        long = "/root/" + "n" * 10_000
        rows = Feeder().rows(
            [
                OPEN,
                'open "/root/a \\"b\\" c" flags READ mode 0666',
                'close "/root/a \\"b\\" c" bytes read 1 written 0',
                f'open "{long}" flags READ mode 0666',
                f'close "{long}" bytes read 1 written 0',
            ]
        )
        assert rows[0]["path"] == '/root/a "b" c'
        assert len(rows[1]["path"]) <= 4096

    def test_quote_in_path_as_sftp_server_logs_it(self) -> None:
        """sftp-server logs a quote raw and doubles a backslash: such paths are kept whole and a
        name ending in a fake '" bytes read … written …' neither hides nor changes the transfer."""
        rows = Feeder().rows(
            [
                OPEN,  # lines as OpenSSH 9 sftp-server -l INFO writes them
                'open "/root/o"ut x" flags WRITE,CREATE,TRUNCATE mode 0644',
                'close "/root/o"ut x" bytes read 0 written 2',
                'open "/root/a" bytes read 0 written 99" flags WRITE,CREATE,TRUNCATE mode 0644',
                'close "/root/a" bytes read 0 written 99" bytes read 0 written 2',
                r'open "/root/b\\\\s\\"q" flags WRITE,CREATE,TRUNCATE mode 0644',  # name b\\s\"q
                r'close "/root/b\\\\s\\"q" bytes read 0 written 57',
                'rename old "/root/o"ut x" new "/root/n"ew"',
                CLOSE,
            ]
        )
        assert [brief(r) for r in rows] == [
            ("upload", '/root/o"ut x', 2, "success"),
            ("upload", '/root/a" bytes read 0 written 99', 2, "success"),
            ("upload", r"/root/b\\s\"q", 57, "success"),
            ("rename", '/root/n"ew', None, "success"),
        ]

    @pytest.mark.parametrize(
        "message",
        [
            "",
            "close",
            'close "/x" bytes read -1 written 0',
            'close "/x" bytes read 1e9 written 0',
            'close "/x" bytes read 999999999999999999999999 written 0',
            "open /x flags READ",
            "session opened for local user  from []",
            "\x00\x00",
            'rename old "/a"',
            "sent status",
            'remove name "/x" trailing',
            "\udcff\udcfe",
        ],
    )
    def test_garbage_yields_nothing(self, message: str) -> None:
        """Garbage in a session gives no row and does not break the session."""
        f = Feeder()
        f(OPEN)
        assert f(message) == []
        ok = f.rows(['open "/root/z" flags READ mode 0666', 'close "/root/z" bytes read 1 written 0'])
        assert [brief(r) for r in ok] == [("download", "/root/z", 1, "success")]

    def test_other_programs_and_oversize(self) -> None:
        """Lines of other programs, without a pid, or of 10 MB give nothing."""
        f = Feeder()
        assert f('close "/x" bytes read 0 written 5', program="bash") == []
        d = SftpDeriver(lookup_user=lambda pid: "root")
        ev = {
            "id": "jd-1",
            "kind": "system_log",
            "ts": "2026-11-26T20:00:00.000Z",
            "data": {"program": "sftp-server", "pid": None, "message": 'close "/x" bytes read 0 written 5'},
        }
        assert d(ev) == []  # type: ignore[arg-type]
        ev["data"]["pid"] = 5
        ev["data"]["message"] = 'close "' + "x" * 10_000_000 + '" bytes read 0 written 5'
        assert d(ev) == []  # type: ignore[arg-type]

    def test_sessions_are_bounded(self) -> None:
        """Thousands of sessions that never close keep the table at its cap."""
        d = SftpDeriver(max_sessions=50, lookup_user=lambda pid: None)
        f = Feeder(d)
        for pid in range(2000):
            f(OPEN, pid=pid)
        assert len(d._sessions) == 50
