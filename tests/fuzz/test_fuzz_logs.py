"""Hypothesis fuzzing of the log parsers and derivers: syslog lines (RFC 3164, RFC 5424, raw),
auth, sftp-server and FTP transfer-log lines. No input raises, and every event made validates
against the schema."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import format_ts
from agent.schema import validate_data, validate_event
from collectors.derivers.auth import AuthDeriver
from collectors.derivers.ftp import FtpTransferDeriver, parse_vsftpd, parse_xferlog
from collectors.derivers.sftp import SftpDeriver
from collectors.syslog.parse import SyslogLineParser

FUZZ = settings(max_examples=200, deadline=None)
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo"]
PROGRAMS = [
    "sshd",
    "sshd-session",
    "sudo",
    "su",
    "login",
    "ftpd",
    "vsftpd",
    "proftpd",
    "klogind",
    "gdm",
    "gdm-password]",
    "sftp-server",
    "internal-sftp",
    "xferlog",
    "root",
    "cron",
    "kernel",
]
#: text with the characters that matter to these grammars
TEXT = st.text(
    alphabet=st.sampled_from(list("abcAZ019 :;=[]()\"'/\\-_.,@*\r\t\x00\u00e9\ufeff")) | st.characters(), max_size=120
)
IP = st.sampled_from(["198.51.100.7", "203.0.113.9", "2001:db8::1", "::ffff:192.0.2.1", "host.example", "(null)", ""])
WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=" \n"), min_size=0, max_size=20
)


@st.composite
def rfc3164(draw: Any) -> str:
    pri = draw(st.sampled_from(["", "<13>", "<86>", "<191>", "<999>"]))
    mon = draw(st.sampled_from(MONTHS))
    day = draw(st.sampled_from([" 1", "1", "29", "31", "00", "99"]))
    clock = draw(st.sampled_from(["00:00:00", "23:59:60", "25:61:61", "12:34:56"]))
    host = draw(st.sampled_from(["web-01", "h", "-", "x" * 300]))
    sep = draw(st.sampled_from([" ", "  -- ", " -- "]))
    prog = draw(st.sampled_from(PROGRAMS + ["sshd(pam_unix)", "syslogd 1.4.1", "(sd-pam)", ""]))
    pid = draw(st.sampled_from(["", "[812]", "[]", "[x]", "[99999999999]"]))
    sub = draw(st.sampled_from(["", " (com.example.job[4])"]))
    colon = draw(st.sampled_from([": ", ":", " "]))
    end = draw(st.sampled_from(["", "\r", "\r\r"]))
    return f"{pri}{mon} {day} {clock} {host}{sep}{prog}{pid}{sub}{colon}{draw(TEXT)}{end}"


@st.composite
def rfc5424(draw: Any) -> str:
    pri = draw(st.sampled_from(["<34>", "<165>", "<0>"]))
    stamp = draw(
        st.sampled_from(["-", "2026-11-26T21:22:36.003Z", "2026-02-30T00:00:00Z", "2026-11-26T21:22:36+09:00"])
    )
    sd = draw(st.sampled_from(["-", '[a@1 k="v"]', '[a@1 k="v\\"]"]', "[", '[x k="1"][y]', "[a k=1]"]))
    host, app, procid, msgid = (draw(WORD) or "-" for _ in range(4))
    return f"{pri}1 {stamp} {host} {app} {procid} {msgid} {sd} {draw(TEXT)}"


@st.composite
def ctime_line(draw: Any) -> str:
    stamp = draw(st.sampled_from(["Tue Dec  1 10:00:00 2026", "Mon Feb 29 10:00:00 2027", "Sun Foo 99 99:99:99 2026"]))
    rest = draw(
        st.one_of(
            st.builds(
                lambda secs, ip, size, path, t, d, m, u, s: f"{secs} {ip} {size} {path} {t} _ {d} {m} {u} ftp 0 * {s}",
                st.integers(0, 10**11),
                IP,
                st.integers(0, 10**21),
                WORD,
                st.sampled_from("abx"),
                st.sampled_from("oidx"),
                st.sampled_from("argx"),
                WORD,
                st.sampled_from(["c", "i", "", "x"]),
            ),
            st.builds(
                lambda pid, u, ok, what, ip, path, size: (
                    f'[pid {pid}] [{u}] {ok} {what}: Client "{ip}", "{path}"{size}'
                ),
                st.integers(0, 10**12),
                WORD,
                st.sampled_from(["OK", "FAIL"]),
                st.sampled_from(["UPLOAD", "DOWNLOAD", "DELETE", "LOGIN", "RENAME"]),
                IP,
                TEXT,
                st.sampled_from(["", ", 5 bytes", ", 5 bytes, 1.00Kbyte/sec", ", x bytes"]),
            ),
            TEXT,
        )
    )
    return f"{stamp} {rest}"


AUTH_MESSAGES = st.one_of(
    TEXT,
    st.builds("Failed password for {} from {} port {} ssh2".format, WORD, IP, st.integers(-1, 10**6)),
    st.builds("message repeated {} times: [ {}]".format, st.integers(-1, 10**12), TEXT),
    st.builds(
        "PAM {} more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost={}  user={}".format,
        st.integers(0, 10**12),
        IP,
        WORD,
    ),
    st.builds(
        "authentication failure; logname={} uid=0 euid=0 tty={} ruser={} rhost={}  user={}".format,
        WORD,
        WORD,
        WORD,
        IP,
        WORD,
    ),
    st.builds(
        "session {} for user {} by {}(uid={})".format,
        st.sampled_from(["opened", "closed"]),
        WORD,
        WORD,
        st.integers(0, 10**6),
    ),
    st.builds("Received disconnect from {}: {}: {}".format, IP, st.integers(0, 10**4), TEXT),
    st.builds("Disconnecting: Too many authentication failures for {} [preauth]".format, WORD),
    st.builds("FAILED LOGIN {} FROM {} FOR {}, {}".format, st.integers(0, 10**10), IP, WORD, TEXT),
    st.builds("{}FTP LOGIN FROM {} [{}], {}".format, st.sampled_from(["", "ANONYMOUS "]), IP, IP, WORD),
    st.builds("ROOT LOGIN ON {} FROM {}".format, WORD, IP),
    st.builds("Authentication failed from {} ({}): {}".format, IP, IP, TEXT),
    st.builds("pam_unix({}:{}): {}".format, WORD, st.sampled_from(["session", "auth"]), TEXT),
    st.builds("{} : TTY={} ; PWD={} ; USER={} ; COMMAND={}".format, WORD, WORD, TEXT, WORD, TEXT),
    st.builds(
        'open "{}" flags {} mode {}'.format,
        TEXT,
        st.sampled_from(["READ", "WRITE,CREATE,TRUNCATE"]),
        st.integers(0, 999),
    ),
    st.builds('close "{}" bytes read {} written {}'.format, TEXT, st.integers(0, 10**21), st.integers(0, 10**21)),
    st.builds("session opened for local user {} from [{}]".format, WORD, IP),
)


def _events(lines: list[str], source: str = "/var/log/auth.log") -> list[dict[str, Any]]:
    parser = SyslogLineParser()
    out = []
    for off, line in enumerate(lines):
        ts, data = parser.parse(line)
        validate_data("system_log", data)
        data["source"] = source
        out.append(
            {
                "id": f"f-0123456789abcdef-{off}",
                "kind": "system_log",
                "server": "fuzz",
                "ts": ts or format_ts(),
                "data": data,
            }
        )
    return out


def _derive(events: list[dict[str, Any]]) -> None:
    derivers = [AuthDeriver(), SftpDeriver(), FtpTransferDeriver()]
    for ev in events:
        validate_event(ev)
        for d in derivers:
            for row in d(ev):
                validate_event({**row, "server": "fuzz"})


class TestSyslogParserFuzz:
    @FUZZ
    @given(st.lists(rfc3164(), min_size=1, max_size=8))
    def test_rfc3164(self, lines: list[str]):
        """RFC 3164 lines of every tag shape and impossible dates: valid events; a CRLF line reads as
        the same line without its CR."""
        for line in lines:
            if line.endswith("\r") and not line.endswith("\r\r"):
                assert SyslogLineParser().parse(line)[1] == SyslogLineParser().parse(line[:-1])[1]
        _derive(_events(lines))

    @FUZZ
    @given(st.lists(rfc5424(), min_size=1, max_size=4))
    def test_rfc5424(self, lines: list[str]):
        """RFC 5424 lines with odd structured data and stamps: valid events."""
        _derive(_events(lines))

    @FUZZ
    @given(st.lists(TEXT, min_size=1, max_size=4))
    def test_raw(self, lines: list[str]):
        """Anything at all: the raw fallback, a valid event."""
        _derive(_events(lines))


class TestDeriverFuzz:
    @FUZZ
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(PROGRAMS),
                st.one_of(st.none(), st.integers(-5, 2**40)),
                AUTH_MESSAGES,
                st.sampled_from([None, "pam_unix", "pam_ldap"]),
            ),
            min_size=1,
            max_size=12,
        )
    )
    def test_auth_and_sftp_lines(self, lines: list[tuple[str, int | None, str, str | None]]):
        """Auth and sftp-server messages of every known shape, with hostile fields: rows validate."""
        events = []
        for off, (program, pid, message, module) in enumerate(lines):
            data: dict[str, Any] = {
                "program": program,
                "level": "info",
                "pid": pid,
                "message": message,
                "hostname": "fuzz-01",
                "source": "/var/log/secure",
            }
            if module:
                data["extra"] = {"pam_module": module}
            events.append(
                {
                    "id": f"f-0123456789abcdef-{off}",
                    "kind": "system_log",
                    "server": "fuzz",
                    "ts": format_ts(),
                    "data": data,
                }
            )
        _derive(events)

    @FUZZ
    @given(st.lists(ctime_line(), min_size=1, max_size=6))
    def test_ftp_transfer_logs(self, lines: list[str]):
        """xferlog and vsftpd.log lines with hostile fields: rows validate, the parsers never raise."""
        _derive(_events(lines, "/var/log/xferlog"))
        for line in lines:
            parse_xferlog(line)
            parse_vsftpd(line)
