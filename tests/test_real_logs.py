"""Lines as real servers write them, old and odd ones included: each gives the exact ``system_log``
fields (program, pid, level, message with its blanks and without a CR, ts) and, through the
derivers, the exact user-activity and transfer rows."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent.events import format_ts
from agent.schema import validate_data
from collectors.derivers.auth import AuthDeriver
from collectors.derivers.ftp import FtpTransferDeriver
from collectors.syslog.parse import SyslogLineParser

NOW = time.mktime((2026, 12, 1, 12, 0, 0, 0, 0, -1))


def ts(mo: int, d: int, h: int, mi: int, s: int, y: int = 2026, ms: int = 0) -> str:
    return format_ts(time.mktime((y, mo, d, h, mi, s, 0, 0, -1)) + ms / 1000)


def parse(line: str) -> tuple[str | None, dict[str, Any]]:
    ts_, data = SyslogLineParser(anchor=NOW, now=lambda: NOW).parse(line)
    validate_data("system_log", data)
    return ts_, data


def derive_file(lines: list[str], deriver: Any, source: str = "/var/log/secure") -> list[dict[str, Any]]:
    """Lines of one file, parsed in order and handed to a deriver as the file source does."""
    parser = SyslogLineParser(anchor=NOW, now=lambda: NOW)
    rows = []
    for off, line in enumerate(lines):
        t, data = parser.parse(line)
        data["source"] = source
        for ev in deriver({"id": f"f-00000000-{off}", "kind": "system_log", "ts": t, "data": data}):
            validate_data(ev["kind"], ev["data"])
            rows.append({**ev["data"], "ts": ev["ts"]})
    return rows


# (line, ts, program, pid, hostname, message, extra)
SYSLOG_CASES = [
    (
        "Nov 26 21:22:36 web-01 sshd[812]: Accepted publickey for deploy from 192.0.2.10 port 52144 ssh2\r",
        ts(11, 26, 21, 22, 36),
        "sshd",
        812,
        "web-01",
        "Accepted publickey for deploy from 192.0.2.10 port 52144 ssh2",
        None,
    ),
    (
        "Dec  1 09:00:00 oldbox syslogd 1.4.1: restart.",
        ts(12, 1, 9, 0, 0),
        "syslogd",
        None,
        "oldbox",
        "restart.",
        {"version": "1.4.1"},
    ),
    (
        "Dec  1 09:00:01 oldbox  -- root[2421]: ROOT LOGIN ON tty2",
        ts(12, 1, 9, 0, 1),
        "root",
        2421,
        "oldbox",
        "ROOT LOGIN ON tty2",
        None,
    ),
    ("Dec  1 09:00:02 oldbox -- MARK --", ts(12, 1, 9, 0, 2), "unknown", None, "oldbox", "-- MARK --", None),
    (
        "Dec  1 09:00:03 rhel4 sshd(pam_unix)[1234]: session opened for user alice by (uid=0)",
        ts(12, 1, 9, 0, 3),
        "sshd",
        1234,
        "rhel4",
        "session opened for user alice by (uid=0)",
        {"pam_module": "pam_unix"},
    ),
    (
        "Dec  1 09:00:04 rhel4 su(pam_unix)[1300]: session opened for user root by bob(uid=500)",
        ts(12, 1, 9, 0, 4),
        "su",
        1300,
        "rhel4",
        "session opened for user root by bob(uid=500)",
        {"pam_module": "pam_unix"},
    ),
    (
        "Dec  1 09:00:05 rhel4 (sd-pam)[77]: pam_unix(systemd-user:session): session closed for user alice",
        ts(12, 1, 9, 0, 5),
        "(sd-pam)",
        77,
        "rhel4",
        "pam_unix(systemd-user:session): session closed for user alice",
        None,
    ),
    (
        "Dec  1 09:00:06 mac-07 com.apple.xpc.launchd[1] (com.example.job[4242]): Service exited with abnormal code: 1",
        ts(12, 1, 9, 0, 6),
        "com.apple.xpc.launchd",
        1,
        "mac-07",
        "Service exited with abnormal code: 1",
        {"subsystem": "com.example.job[4242]"},
    ),
    (
        "Dec 1 09:00:07 busybox-1 udhcpc[99]: lease of 192.0.2.44 obtained",
        ts(12, 1, 9, 0, 7),
        "udhcpc",
        99,
        "busybox-1",
        "lease of 192.0.2.44 obtained",
        None,
    ),
    (
        "Dec  1 09:00:08 web-01 app[5]:   indented  with  blanks  \r",
        ts(12, 1, 9, 0, 8),
        "app",
        5,
        "web-01",
        "  indented  with  blanks  ",
        None,
    ),
    (
        "2026-12-01T09:00:09.123456+01:00 web-02 CRON[77]: (root) CMD (run-parts /etc/cron.hourly)\r",
        ts(12, 1, 8, 0, 9, ms=123),
        "CRON",
        77,
        "web-02",
        "(root) CMD (run-parts /etc/cron.hourly)",
        None,
    ),
    (
        "Tue Dec  1 09:00:10 2026 1 198.51.100.7 1048576 /srv/ftp/a.iso b _ o r alice ftp 0 * c",
        ts(12, 1, 9, 0, 10),
        "xferlog",
        None,
        None,
        "1 198.51.100.7 1048576 /srv/ftp/a.iso b _ o r alice ftp 0 * c",
        None,
    ),
    (
        'Tue Dec  1 09:00:11 2026 [pid 3141] [bob] OK UPLOAD: Client "203.0.113.5", "/home/bob/r.tar", 512 bytes, '
        "101.20Kbyte/sec",
        ts(12, 1, 9, 0, 11),
        "vsftpd",
        3141,
        None,
        '[bob] OK UPLOAD: Client "203.0.113.5", "/home/bob/r.tar", 512 bytes, 101.20Kbyte/sec',
        None,
    ),
    (
        "2026-12-01 09:00:12,345 ftp-01 proftpd[4242] ftp-01 (client.example[198.51.100.9]): FTP session opened.",
        ts(12, 1, 9, 0, 12, ms=345),
        "proftpd",
        4242,
        "ftp-01",
        "ftp-01 (client.example[198.51.100.9]): FTP session opened.",
        None,
    ),
]


class TestSyslogLines:
    @pytest.mark.parametrize(
        ("line", "when", "program", "pid", "host", "message", "extra"),
        SYSLOG_CASES,
        ids=[c[2] + ":" + c[5][:24] for c in SYSLOG_CASES],
    )
    def test_line(self, line, when, program, pid, host, message, extra):
        """Each line gives exactly its program, pid, host, message (blanks kept, no CR) and time."""
        t, d = parse(line)
        assert t == when
        assert (d["program"], d["pid"], d["hostname"], d["message"], d["level"]) == (
            program,
            pid,
            host,
            message,
            "info",
        )
        assert d.get("extra") == extra

    def test_pri_gives_level_on_any_format(self):
        """A <PRI> prefix sets facility and level, CRLF or not."""
        _, d = parse("<86>Dec  1 09:00:00 rhel4 sshd(pam_unix)[1]: authentication failure; user=root\r")
        assert (d["facility"], d["level"], d["program"]) == ("authpriv", "info", "sshd")
        _, d = parse("<27>1 2026-12-01T09:00:00.5Z web-03 nginx 12 - - upstream timed out\r")
        assert (d["facility"], d["level"], d["message"]) == ("daemon", "error", "upstream timed out")

    def test_crlf_keeps_inner_carriage_returns(self):
        """Only the line end's CR goes; one inside the message is data."""
        _, d = parse("Dec  1 09:00:00 h a: one\rtwo\r")
        assert d["message"] == "one\rtwo"


class TestUserActivityFromRealLines:
    def test_old_pam_tags(self):
        """RHEL 4-era PAM lines under prog(pam_unix) tags give rows with the module kept."""
        rows = derive_file(
            [
                "Dec  1 09:00:00 rhel4 sshd(pam_unix)[1234]: authentication failure; logname= uid=0 euid=0 "
                "tty=NODEVssh ruser= rhost=198.51.100.7  user=root",
                "Dec  1 09:01:00 rhel4 su(pam_unix)[1300]: session opened for user root by bob(uid=500)",
                "Dec  1 09:02:00 rhel4 su(pam_unix)[1301]: authentication failure; logname=carol uid=501 euid=0 "
                "tty=pts/1 "
                "ruser=carol rhost=  user=root",
                "Dec  1 09:03:00 rhel4 login(pam_unix)[2421]: session opened for user dave by LOGIN(uid=0)",
                "Dec  1 09:04:00 rhel4 vsftpd(pam_unix)[3000]: authentication failure; logname= uid=0 euid=0 tty= "
                "ruser= "
                "rhost=203.0.113.5  user=erin",
                "Dec  1 09:05:00 rhel4 gdm(pam_unix)[2633]: session opened for user frank by (uid=0)",
                "Dec  1 09:06:00 rhel4 sshd(pam_unix)[1240]: session closed for user alice",
            ],
            AuthDeriver(),
        )
        got = [(r["action"], r["user"], r["ip"], r["result"], r["details"].get("target_user")) for r in rows]
        assert got == [
            ("login_failed", "root", "198.51.100.7", 401, None),
            ("su", "bob", None, 200, "root"),
            ("su", "carol", None, 401, "root"),
            ("login", "dave", None, 200, None),
            ("login_failed", "erin", "203.0.113.5", 401, None),
            ("login", "frank", None, 200, None),
            ("logout", "alice", None, 200, None),
        ]
        assert {r["details"]["pam_module"] for r in rows} == {"pam_unix"}
        assert [r["ts"] for r in rows][:2] == [ts(12, 1, 9, 0, 0), ts(12, 1, 9, 1, 0)]

    def test_summaries_stand_for_several_attempts(self):
        """rsyslog's 'message repeated N times' gives N attempts, 'PAM N more' N more, and
        'Too many authentication failures' is a failure row."""
        rows = derive_file(
            [
                "Dec  1 10:00:00 web-04 sshd[4242]: Failed password for root from 198.51.100.7 port 4242 ssh2",
                "Dec  1 10:00:09 web-04 sshd[4242]: message repeated 5 times: [ Failed password for root from "
                "198.51.100.7 port 4242 ssh2]",
                "Dec  1 10:00:10 web-04 sshd[4242]: PAM 4 more authentication failures; logname= uid=0 euid=0 tty=ssh "
                "ruser= rhost=198.51.100.7  user=root",
                "Dec  1 10:00:11 web-04 sshd[4242]: Disconnecting: Too many authentication failures for root [preauth]",
                "Dec  1 10:00:12 web-04 sshd[4250]: Disconnecting authenticating user admin 203.0.113.8 port 5050: "
                "Too many authentication failures [preauth]",
            ],
            AuthDeriver(),
        )
        got = [(r["action"], r["user"], r["ip"], r["result"], r["details"].get("attempts")) for r in rows]
        assert got == [
            ("login_failed", "root", "198.51.100.7", 401, None),
            ("login_failed", "root", "198.51.100.7", 401, 5),
            ("login_failed", "root", "198.51.100.7", 401, 4),
            ("login_failed", "root", None, 401, None),
            ("login_failed", "admin", "203.0.113.8", 401, None),
        ]
        assert rows[1]["details"]["repeated"] is True and rows[1]["details"]["port"] == 4242

    def test_old_sshd_login_and_disconnect(self):
        """An old sshd's session: the login, then 'Received disconnect from IP: 11: …' (no port) is its
        logout; the PAM 'session closed' of the same connection adds nothing."""
        rows = derive_file(
            [
                "Dec  1 11:00:00 rhel4 sshd[2000]: Accepted password for gina from 192.0.2.33 port 40000 ssh2",
                "Dec  1 11:00:00 rhel4 sshd(pam_unix)[2000]: session opened for user gina by (uid=0)",
                "Dec  1 11:20:00 rhel4 sshd[2002]: Received disconnect from 192.0.2.33: 11: Bye Bye",
                "Dec  1 11:20:00 rhel4 sshd(pam_unix)[2000]: session closed for user gina",
                "Dec  1 11:21:00 rhel4 sshd[2100]: Received disconnect from 203.0.113.99: 11: Bye Bye",
            ],
            AuthDeriver(),
        )
        got = [(r["action"], r["user"], r["ip"], r["result"]) for r in rows]
        assert got == [("login", "gina", "192.0.2.33", 200), ("logout", "gina", "192.0.2.33", 200)]
        assert rows[1]["ts"] == ts(12, 1, 11, 20, 0) and rows[1]["details"]["reason"] == "Bye Bye"

    def test_console_logins(self):
        """login(1): ROOT LOGIN under its '--' tag, util-linux's FAILED LOGIN with (null), one row per
        login process though its PAM session logs the same login."""
        rows = derive_file(
            [
                "Dec  1 12:00:00 oldbox login(pam_unix)[2421]: session opened for user root by LOGIN(uid=0)",
                "Dec  1 12:00:00 oldbox  -- root[2421]: ROOT LOGIN ON tty2",
                "Dec  1 12:01:00 oldbox login[2500]: FAILED LOGIN 1 FROM (null) FOR alice, Authentication failure",
                "Dec  1 12:02:00 oldbox login[2501]: FAILED LOGIN 2 FROM 198.51.100.20 FOR bob, Authentication failure",
                "Dec  1 12:03:00 oldbox login[2502]: TOO MANY LOGIN TRIES (5) on '/dev/tty3' FOR 'carol'",
                "Dec  1 12:04:00 oldbox login[2503]: LOGIN ON tty1 BY dave",
            ],
            AuthDeriver(),
        )
        got = [
            (r["action"], r["user"], r["ip"], r["result"], r["details"].get("tty"), r["details"].get("attempts"))
            for r in rows
        ]
        assert got == [
            ("login", "root", None, 200, None, None),
            ("login_failed", "alice", None, 401, None, None),
            ("login_failed", "bob", "198.51.100.20", 401, None, None),
            ("login_failed", "carol", None, 401, "/dev/tty3", 5),
            ("login", "dave", None, 200, "tty1", None),
        ]

    def test_ftp_servers_klogind_and_gdm(self):
        """wu-ftpd/BSD ftpd, vsftpd, ProFTPD, klogind and gdm lines give their logins and failures."""
        rows = derive_file(
            [
                "Dec  1 13:00:00 ftp-02 ftpd[600]: ANONYMOUS FTP LOGIN FROM 198.51.100.7 [198.51.100.7], mozilla@",
                "Dec  1 13:00:01 ftp-02 ftpd[601]: FTP LOGIN FROM client.example [203.0.113.4], henry",
                "Dec  1 13:00:02 ftp-02 ftpd[602]: FTP LOGIN REFUSED (username in denied-uid) FROM 203.0.113.4 "
                "[203.0.113.4], root",
                'Dec  1 13:00:03 ftp-02 vsftpd[603]: [iris] FAIL LOGIN: Client "::ffff:192.0.2.61"',
                "Dec  1 13:00:04 ftp-02 proftpd[604]: ftp-02 (client.example[192.0.2.62]) - USER jack: Login "
                "successful.",
                "Dec  1 13:00:05 ftp-02 proftpd[605]: ftp-02 (192.0.2.63[192.0.2.63]) - USER kim (Login failed): "
                "Incorrect password",
                "Dec  1 13:00:06 ftp-02 klogind[606]: Authentication failed from 198.51.100.8 (198.51.100.8): "
                "Permission denied in remote login",
                "Dec  1 13:00:07 ws-01 gdm-password][607]: pam_unix(gdm-password:session): session opened for user "
                "lena(uid=1000) by (uid=0)",
                "Dec  1 13:00:08 ws-01 gdm-password][608]: pam_unix(gdm-password:auth): authentication failure; "
                "logname= "
                "uid=0 euid=0 tty=/dev/tty1 ruser= rhost=  user=mona",
            ],
            AuthDeriver(),
        )
        got = [(r["action"], r["user"], r["ip"], r["result"]) for r in rows]
        assert got == [
            ("login", "anonymous", "198.51.100.7", 200),
            ("login", "henry", "203.0.113.4", 200),
            ("login_failed", "root", "203.0.113.4", 403),
            ("login_failed", "iris", "192.0.2.61", 401),
            ("login", "jack", "192.0.2.62", 200),
            ("login_failed", "kim", "192.0.2.63", 401),
            ("login_failed", "unknown", "198.51.100.8", 401),
            ("login", "lena", None, 200),
            ("login_failed", "mona", None, 401),
        ]
        assert rows[0]["details"]["anonymous_id"] == "mozilla@"
        assert rows[6]["details"]["user_unknown"] is True

    def test_forged_and_garbled_lines_give_nothing(self):
        """Look-alikes with a wrong shape, and lines of unknown programs, give no row."""
        rows = derive_file(
            [
                "Dec  1 14:00:00 h sshd[1]: message repeated 5 times: [ message repeated 3 times: [ Failed password "
                "for "
                "root from 198.51.100.7 port 1 ssh2]]",
                "Dec  1 14:00:01 h sshd[1]: message repeated many times: [ Failed password for root from 1.2.3.4 port "
                "1 "
                "ssh2]",
                "Dec  1 14:00:02 h myapp[2]: FTP LOGIN FROM 198.51.100.7 [198.51.100.7], alice",
                "Dec  1 14:00:03 h sshd(pam_unix)[3]: authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
                "rhost=x",
                "Dec  1 14:00:04 h klogind[4]: Authentication failed from",
            ],
            AuthDeriver(),
        )
        assert rows == []


class TestTransfersFromFtpLogs:
    def test_xferlog_lines(self):
        """Standard xferlog lines (vsftpd, ProFTPD) give one transfer each: direction, completion,
        anonymous access and a delete."""
        rows = derive_file(
            [
                "Tue Dec  1 10:00:00 2026 1 198.51.100.7 1048576 /srv/ftp/a.iso b _ o r alice ftp 0 * c",
                "Tue Dec  1 10:00:05 2026 3 198.51.100.7 4096 /home/bob/up_load.txt a _ i r bob ftp 0 * c",
                "Tue Dec  1 10:00:09 2026 2 203.0.113.5 3922432 /srv/ftp/big.bin b _ o r alice ftp 0 * i",
                "Tue Dec  1 10:01:00 2026 1 client.example 10 /pub/readme b _ o a guest@example.org ftp 0 * c",
                "Tue Dec  1 10:02:00 2026 0 198.51.100.7 0 /home/bob/old.log b _ d r bob ftp 0 * c",
            ],
            FtpTransferDeriver(),
            source="/var/log/xferlog",
        )
        got = [
            (r["type"], r["username"], r["path"], r["object_name"], r["size"], r.get("remote_ip"), r["status"], r["ts"])
            for r in rows
        ]
        assert got == [
            ("download", "alice", "/srv/ftp/a.iso", "a.iso", 1048576, "198.51.100.7", "success", ts(12, 1, 10, 0, 0)),
            (
                "upload",
                "bob",
                "/home/bob/up_load.txt",
                "up_load.txt",
                4096,
                "198.51.100.7",
                "success",
                ts(12, 1, 10, 0, 5),
            ),
            ("download", "alice", "/srv/ftp/big.bin", "big.bin", 3922432, "203.0.113.5", "failed", ts(12, 1, 10, 0, 9)),
            ("download", "anonymous", "/pub/readme", "readme", 10, None, "success", ts(12, 1, 10, 1, 0)),
            ("remove", "bob", "/home/bob/old.log", "old.log", 0, "198.51.100.7", "success", ts(12, 1, 10, 2, 0)),
        ]
        assert rows[3]["extra"] == {
            "service": "ftp",
            "transfer_type": "binary",
            "access_mode": "anonymous",
            "anonymous_id": "guest@example.org",
            "host": "client.example",
        }
        assert rows[1]["extra"]["transfer_type"] == "ascii" and rows[0]["duration_ms"] == 1000

    def test_vsftpd_log_and_dual_log(self):
        """vsftpd's own format gives the same transfer; with dual_log both lines of one transfer give one row."""
        rows = derive_file(
            [
                "Tue Dec  1 10:00:00 2026 1 192.0.2.9 5000 /home/nina/up_file.bin b _ i r nina ftp 0 * c",
                'Tue Dec  1 10:00:00 2026 [pid 11837] [nina] OK UPLOAD: Client "192.0.2.9", "/home/nina/up file.bin", '
                "5000 bytes, 3136.04Kbyte/sec",
                'Tue Dec  1 10:00:01 2026 [pid 11837] [nina] FAIL DOWNLOAD: Client "::ffff:192.0.2.9", '
                '"/home/nina/x.iso", '
                "1024 bytes, 11.00Kbyte/sec",
                'Tue Dec  1 10:00:02 2026 [pid 11837] [nina] OK DELETE: Client "192.0.2.9", "/home/nina/up file.bin"',
                'Tue Dec  1 10:00:03 2026 [pid 11837] [nina] OK MKDIR: Client "192.0.2.9", "/home/nina/new dir"',
            ],
            FtpTransferDeriver(),
            source="/var/log/vsftpd.log",
        )
        got = [(r["type"], r["username"], r["path"], r.get("size"), r.get("remote_ip"), r["status"]) for r in rows]
        assert got == [
            ("upload", "nina", "/home/nina/up_file.bin", 5000, "192.0.2.9", "success"),
            ("download", "nina", "/home/nina/x.iso", 1024, "192.0.2.9", "failed"),
            ("remove", "nina", "/home/nina/up file.bin", None, "192.0.2.9", "success"),
            ("mkdir", "nina", "/home/nina/new dir", None, "192.0.2.9", "success"),
        ]

    def test_hostile_file_names(self):
        """A file name that imitates the fields after it cannot move them (they are read from the end)."""
        rows = derive_file(
            [
                "Tue Dec  1 10:00:00 2026 1 192.0.2.9 7 /tmp/x_b___o_r_root_ftp_0_*_c b _ i r mallory ftp 0 * c",
                'Tue Dec  1 10:00:01 2026 [pid 5] [mallory] OK UPLOAD: Client "192.0.2.9", "/tmp/a", 999 bytes, '
                "1.00Kbyte/sec"
                '", 5 bytes, 1.00Kbyte/sec',
            ],
            FtpTransferDeriver(),
            source="/var/log/vsftpd.log",
        )
        assert [(r["username"], r["path"], r["size"]) for r in rows] == [
            ("mallory", "/tmp/x_b___o_r_root_ftp_0_*_c", 7),
            ("mallory", '/tmp/a", 999 bytes, 1.00Kbyte/sec', 5),
        ]


class TestReadmeFormats:
    def test_each_example_line_reads_as_the_table_says(self):
        """The README's table of formats: every example line is read by its format (a known
        program, not the raw fallback), except the last row's, which is the fallback."""
        from pathlib import Path

        readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
        section = readme.split("## Log formats it reads", 1)[1].split("\n## ", 1)[0]
        rows = [r for r in section.splitlines() if r.startswith("| ") and "`" in r.split("|")[3]]
        examples = [r.split("|")[3].strip().strip("`") for r in rows]
        assert len(examples) >= 12
        for row, line in zip(rows[:-1], examples[:-1], strict=True):
            t, d = parse(line)
            assert d["program"] != "unknown" and t is not None, line
            said = row.split("|")[4]
            if "`user_activity`" in said:
                assert derive_file([line], AuthDeriver()), line
            if "`webftp_transfer`" in said and "sftp-server" not in line:
                assert derive_file([line], FtpTransferDeriver()), line
        assert parse(examples[-1])[1]["program"] == "unknown"


class TestFtpLogTimeZone:
    def test_vsftpd_utc_stamps(self, monkeypatch, tmp_path):
        """vsftpd writes xferlog times in UTC unless use_localtime=YES: ftp.times: utc reads them so,
        the default reads them as local time (ProFTPD's); the setting reaches the ftp file source."""
        from agent.config import parse_config
        from collectors import build_collectors
        from collectors.syslog import year
        from tests.parts import EmitRecorder

        line = "Tue Dec  1 10:00:00 2026 1 198.51.100.7 5 /srv/a b _ o r alice ftp 0 * c"
        monkeypatch.setenv("TZ", "Asia/Seoul")
        time.tzset()
        year._hour.cache_clear()
        try:
            assert SyslogLineParser().parse(line)[0] == "2026-12-01T01:00:00.000Z"
            assert SyslogLineParser(ftp_times="utc").parse(line)[0] == "2026-12-01T10:00:00.000Z"
        finally:
            monkeypatch.delenv("TZ")
            time.tzset()
            year._hour.cache_clear()
        xferlog = tmp_path / "xferlog"
        xferlog.write_text(line + "\n")
        cfg = parse_config(
            {
                "collectors": {
                    "journald": {"enabled": False},
                    "metrics": {"enabled": False},
                    "commands": {"enabled": False},
                    "ftp": {"paths": [str(xferlog)], "times": "utc"},
                }
            }
        )
        sources = {c.name: c for c in build_collectors(cfg, EmitRecorder().context(once=True))}
        assert sources["ftplog"].config.ftp_times == "utc"  # type: ignore[attr-defined]
        assert sources["ftplog"].config.paths == [str(xferlog)]  # type: ignore[attr-defined]
