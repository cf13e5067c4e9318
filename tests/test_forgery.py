"""Forgery: no unprivileged local user can put a row into User activity or WebFTP history.

A throwaway user writes, into a live journald of the test's own, every line the derivers know:
``logger`` with the tags of sshd, its split processes, sudo, su, login, systemd-logind and
sftp-server and vsftpd, any tag with a ``pam_unix(…)`` message, ``systemd-cat`` and ``journal.send`` with
``SYSLOG_IDENTIFIER=sshd``, a message whose embedded newline carries a second line, and the real
sftp-server run by hand with a made-up ``SSH_CONNECTION``. The agent reads that journal and ships
to the reference receiver: no audit row appears, every line is a ``system_log`` row carrying its
sender (``extra.sender``: the user's uid), and ``forged_lines`` counts it by program.

Hook producers are tried the same way: a non-root producer allowed on the socket may not push
``user_activity`` under the default policy, and with a policy that lets it, its events carry the
sender the kernel names — whatever ``sender`` it claims.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.hookclient import HookClient
from collectors.derivers.provenance import SenderRules
from tests.harness import AgentProcess, ReceiverProcess, agent_config
from tests.parts import JOURNALD, LiveJournald
from tests.senders import DEV_LOG, Intruder, internal_count
from tests.support import need, need_binary, need_root, wait_until

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SYSTEM_PYTHON = "/usr/bin/python3"

# the user's own program speaking SFTP to an sftp-server it started itself (INIT, OPEN, READ, CLOSE)
SFTP_BY_HAND = r"""
import os, struct, subprocess, sys
env = {"PATH": "/usr/bin:/bin", "SSH_CONNECTION": "203.0.113.66 4242 127.0.0.1 22", "HOME": "/tmp",
       "USER": sys.argv[2], "LOGNAME": sys.argv[2]}
p = subprocess.Popen([sys.argv[1], "-l", "INFO"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
def send(t, body):
    p.stdin.write(struct.pack(">IB", len(body) + 1, t) + body); p.stdin.flush()
def recv():
    n, = struct.unpack(">I", p.stdout.read(4)); data = p.stdout.read(n); return data[0], data[1:]
def s(b): return struct.pack(">I", len(b)) + b
send(1, struct.pack(">I", 3)); recv()
send(3, struct.pack(">I", 1) + s(b"/etc/hostname") + struct.pack(">II", 1, 0))
t, body = recv(); assert t == 102, t
handle = body[8:8 + struct.unpack(">I", body[4:8])[0]]
send(5, struct.pack(">I", 2) + s(handle) + struct.pack(">QI", 0, 4096)); recv()
send(4, struct.pack(">I", 3) + s(handle)); recv()
p.stdin.close(); p.wait()
"""

JOURNAL_SEND = (
    "import sys\nfrom systemd import journal\n"
    "journal.send(sys.argv[1], SYSLOG_IDENTIFIER=sys.argv[2], SYSLOG_PID='1', _UID='0', _EXE='/usr/sbin/sshd')\n"
)


class ForgeryLab:
    """journald + an agent reading it (auth and sftp derivers on) + the receiver + an intruder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jd = LiveJournald(root / "jd")
        self.receiver = ReceiverProcess(root / "receiver")
        self.agent: AgentProcess | None = None
        self.intruder: Intruder | None = None

    def start(self) -> ForgeryLab:
        self.jd.start()
        # inside the namespace /dev/log leads to this journald (sftp-server logs through syslog(3))
        dev = self.root / "jd" / "dev"
        dev.mkdir()
        self.jd.run(["sh", "-c", f"set -e; for n in null zero urandom; do touch {dev}/$n; "
                                 f"mount --bind /dev/$n {dev}/$n; done; ln -s {DEV_LOG} {dev}/log; "
                                 f"mount --rbind {dev} /dev"])
        self.receiver.start()
        d = self.root / "agent"
        d.mkdir()
        self.agent = AgentProcess(d, agent_config(d, self.receiver, collectors={
            "journald": {"enabled": True, "directory": str(self.jd.journal_dir), "start_at": "beginning"},
            "auth": {"enabled": True}, "sftp": {"enabled": True}}))
        self.agent.start()
        self.intruder = Intruder(self.jd)
        return self

    def stop(self) -> None:
        if self.agent is not None and self.agent.proc is not None:
            self.agent.stop()
        if self.intruder is not None:
            self.intruder.remove()
        self.receiver.stop()
        self.jd.stop()

    def settle(self) -> None:
        """Until a marker root logs after everything else is at the receiver."""
        marker = f"forgery-marker-{secrets.token_hex(4)}"
        self.jd.logger(marker, tag="marker")
        wait_until(lambda: self.receiver.view("system-logs", program="marker", q=marker), 60, what="marker")
        # audit rows travel in a lane of their own: everything spooled before the marker is shipped
        assert self.agent is not None
        self.agent.wait_drained()

    def forged(self, program: str) -> float:
        assert self.agent is not None
        return internal_count(self.agent, "forged_lines", f"program={program}")

    def audit_rows(self) -> list[dict[str, Any]]:
        return self.receiver.view("user-activity") + self.receiver.view("webftp-transfers")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgeryLab]:
    need_root()
    need(os.access(JOURNALD, os.X_OK), "systemd-journald")
    need(os.access(SFTP_SERVER, os.X_OK), "sftp-server (openssh-sftp-server)")
    for b in ("logger", "systemd-cat", "setpriv", "useradd", "nsenter", "unshare"):
        need_binary(b)
    need(subprocess.run([SYSTEM_PYTHON, "-c", "from systemd import journal"], capture_output=True).returncode == 0,
         "python3-systemd for the system python")
    lab = ForgeryLab(tmp_path_factory.mktemp("forgery"))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def _logger(tag: str, *messages: str) -> Any:
    return lambda lab: lab.intruder.logger(tag, *messages)


def _logger_arg(tag: str, message: str) -> Any:
    """logger with the message as its argument: one datagram, newlines and all."""
    return lambda lab: lab.intruder.run(["logger", "--socket", DEV_LOG, "--socket-errors=on", "-t", tag, message])


def _systemd_cat(tag: str, message: str) -> Any:
    return lambda lab: lab.intruder.run(["systemd-cat", "-t", tag], input=message.encode() + b"\n")


def _journal_send(tag: str, message: str) -> Any:
    return lambda lab: lab.intruder.run([SYSTEM_PYTHON, "-c", JOURNAL_SEND, message, tag])


def _sftp_by_hand(lab: ForgeryLab) -> None:
    assert lab.intruder is not None
    lab.intruder.run([SYSTEM_PYTHON, "-c", SFTP_BY_HAND, SFTP_SERVER, lab.intruder.name])


SFTP_LINES = ("session opened for local user root from [203.0.113.66]", 'open "/etc/shadow" flags READ mode 0666',
              'close "/etc/shadow" bytes read 1337 written 0', "session closed for local user root from [203.0.113.66]")
ACCEPTED = "Accepted password for root from 203.0.113.99 port 4242 ssh2"
VSFTPD_LINE = '[root] OK DOWNLOAD: Client "203.0.113.5", "/etc/shadow", 1337 bytes, 1.00Kbyte/sec'

# (case, how the intruder writes, the program it claims, the messages that reach the journal)
CASES: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("logger-sshd", _logger("sshd", ACCEPTED), "sshd", (ACCEPTED,)),
    ("logger-sshd-session", _logger("sshd-session", "Accepted publickey for root from 203.0.113.9 port 1 ssh2"),
     "sshd-session", ("Accepted publickey for root from 203.0.113.9 port 1 ssh2",)),
    ("logger-sudo", _logger("sudo", "root : TTY=pts/0 ; USER=root ; COMMAND=/usr/bin/id"), "sudo",
     ("root : TTY=pts/0 ; USER=root ; COMMAND=/usr/bin/id",)),
    ("logger-su", _logger("su", "(to root) root on pts/0"), "su", ("(to root) root on pts/0",)),
    ("logger-login", _logger("login", "FAILED LOGIN (1) on '/dev/tty1' FOR 'root', Authentication failure"),
     "login", ("FAILED LOGIN (1) on '/dev/tty1' FOR 'root', Authentication failure",)),
    ("logger-systemd-logind", _logger("systemd-logind", "New session 42 of user root."), "systemd-logind",
     ("New session 42 of user root.",)),
    ("logger-sftp-server", _logger("sftp-server", *SFTP_LINES), "sftp-server", SFTP_LINES),
    ("logger-pam-any-tag", _logger("cron", "pam_unix(login:session): session opened for user root(uid=0) by "
                                           "LOGIN(uid=0)"), "pam_unix",
     ("pam_unix(login:session): session opened for user root(uid=0) by LOGIN(uid=0)",)),
    ("logger-pam-sshd", _logger("sshd", "pam_unix(sshd:session): session opened for user root(uid=0) by (uid=0)"),
     "sshd", ("pam_unix(sshd:session): session opened for user root(uid=0) by (uid=0)",)),
    ("logger-vsftpd", _logger("vsftpd", VSFTPD_LINE), "vsftpd", (VSFTPD_LINE,)),
    ("systemd-cat-sshd", _systemd_cat("sshd", ACCEPTED), "sshd", (ACCEPTED,)),
    ("journal-send-sshd", _journal_send("sshd", ACCEPTED), "sshd", (ACCEPTED,)),
    ("embedded-newline", _journal_send("sshd", "Connection from 203.0.113.5\n" + ACCEPTED), "sshd",
     ("Connection from 203.0.113.5\n" + ACCEPTED,)),
    ("logger-embedded-newline", _logger_arg("sudo", "x : y\nroot : TTY=pts/0 ; USER=root ; COMMAND=/bin/sh"),
     "sudo", ("x : y\nroot : TTY=pts/0 ; USER=root ; COMMAND=/bin/sh",)),
    ("sftp-server-by-hand", _sftp_by_hand, "sftp-server", ()),
]


class TestForgedLines:
    @pytest.mark.parametrize(("case", "write", "program", "messages"), CASES, ids=[c[0] for c in CASES])
    def test_forged_line_is_a_system_log_line_not_a_row(self, lab: ForgeryLab, case: str, write: Any, program: str,
                                                        messages: tuple[str, ...]) -> None:
        """The intruder's lines yield no audit row; each is a system_log row with the intruder as its
        sender, and is counted in forged_lines{program}."""
        assert lab.intruder is not None
        before = lab.forged(program)
        write(lab)
        lab.settle()
        assert lab.audit_rows() == []
        mine = [r for r in lab.receiver.view("system-logs")
                if (r.get("extra") or {}).get("sender", {}).get("uid") == lab.intruder.uid]
        if messages:
            got = [r["message"] for r in mine if r["message"] in messages]
            assert sorted(set(got)) == sorted(set(messages)), [r["message"] for r in mine][-10:]
            n = len(messages)
        else:  # the real sftp-server, run by the intruder: its own lines, naming the intruder
            # journald reads a sender's exe from /proc when it takes the line in: of a process that
            # has exited by then (this session lasts milliseconds) it records none, never another
            # (the lines of earlier cases, by logger, name root)
            own = [r for r in mine if r["program"] == "sftp-server" and "203.0.113.66" in r["message"]
                   and f"local user {lab.intruder.name} " in r["message"]
                   and r["extra"]["sender"].get("exe") in (SFTP_SERVER, None)]
            assert {r["message"] for r in own} == {
                f"session opened for local user {lab.intruder.name} from [203.0.113.66]",
                f"session closed for local user {lab.intruder.name} from [203.0.113.66]"}, [
                (r["message"], r["extra"]["sender"]) for r in mine]
            n = len({r["id"] for r in mine if r["program"] == "sftp-server" and r["pid"] == own[0]["pid"]})
        wait_until(lambda: lab.forged(program) - before >= n, 10, what=f"forged_lines{{program={program}}} += {n}")
        assert lab.forged(program) - before == n

    def test_sender_claims_in_the_entry_are_not_believed(self, lab: ForgeryLab) -> None:
        """Fields a sender sets itself (_UID, _EXE through journal.send) do not replace journald's own."""
        assert lab.intruder is not None
        msg = f"Accepted password for root from 203.0.113.7 port {secrets.randbelow(60000) + 1} ssh2"
        _journal_send("sshd", msg)(lab)
        lab.settle()
        rows = [r for r in lab.receiver.view("system-logs", program="sshd") if r["message"] == msg]
        assert len(rows) == 1 and rows[0]["extra"]["sender"]["uid"] == lab.intruder.uid
        # journald reads the exe from /proc as it takes the line in: gone with the process, there
        # is none (never the one the sender claimed)
        assert rows[0]["extra"]["sender"].get("exe") != "/usr/sbin/sshd"
        assert lab.audit_rows() == []


# ----------------------------------------------------------------------------- hook producers

GOOD_UA = {"user": "root", "action": "login", "result": 200}


def _push_as(uid: int, socket_path: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Push ``messages`` as ``uid`` (a child that drops to it), one answer per message."""
    code = (
        "import json, os, socket, sys\n"
        "os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rwb')\n"
        "msgs = json.loads(sys.stdin.read())\n"
        "for m in msgs: f.write(json.dumps(m).encode() + b'\\n')\n"
        "f.flush(); print(json.dumps([json.loads(f.readline()) for _ in msgs]))\n"
    )
    import sys

    r = subprocess.run([sys.executable, "-c", code, socket_path, str(uid)], input=json.dumps(messages),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def producer() -> Iterator[tuple[str, int]]:
    """A throwaway non-root user to push from (removed afterwards)."""
    need_root()
    need_binary("useradd")
    name = f"prod{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield name, int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def _open_socket_agent(agent_factory: Any, receiver: ReceiverProcess, user: str, **hook: Any) -> AgentProcess:
    import tempfile

    sockdir = tempfile.mkdtemp(prefix="alpacon-hook-")
    os.chmod(sockdir, 0o755)
    agent = agent_factory(receiver, hook={"socket": f"{sockdir}/hook.sock", "mode": 0o666,
                                          "allow_users": ["root", user], **hook})
    agent.start()
    return agent  # type: ignore[no-any-return]


class TestHookSender:
    def test_default_policy_denies_a_non_root_producer(self, producer: tuple[str, int], agent_factory: Any,
                                                       receiver: ReceiverProcess) -> None:
        """A producer allowed on the socket may push nothing under the default hook.push policy:
        user_activity is denied with the reason; root is still served."""
        name, uid = producer
        agent = _open_socket_agent(agent_factory, receiver, name)
        answers = _push_as(uid, agent.socket, [{"kind": "user_activity", "data": GOOD_UA},
                                               {"kind": "webftp_transfer", "data": {
                                                   "username": "root", "type": "download", "path": "/etc/shadow",
                                                   "status": "success"}}])
        assert [a["status"] for a in answers] == ["denied", "denied"]
        assert f"uid {uid} ({name}) may not push user_activity" in answers[0]["reason"]
        assert "hook.push.user_activity" in answers[0]["reason"]
        with HookClient(agent.socket) as c:
            assert c.emit("user_activity", {"user": "ops", "action": "login", "result": 200})["status"] == "ok"
        agent.wait_drained()
        assert [r["user"] for r in receiver.view("user-activity")] == ["ops"]
        assert agent.metric("alpacon_agent_hook_requests_total", op="emit", status="denied") == 2

    def test_allowed_producer_carries_its_kernel_sender(self, producer: tuple[str, int], agent_factory: Any,
                                                        receiver: ReceiverProcess) -> None:
        """With a policy that lets it push user_activity, the stored event carries the sender the
        kernel names; a sender or provenance it claims is ignored; other kinds stay denied."""
        name, uid = producer
        agent = _open_socket_agent(agent_factory, receiver, name, push={"user_activity": {"users": ["root", name]}})
        claim = {"source": "journal", "uid": 0, "pid": 1, "exe": "/usr/sbin/sshd"}
        answers = _push_as(uid, agent.socket, [
            {"kind": "user_activity", "data": {**GOOD_UA, "provenance": claim}, "sender": claim},
            {"kind": "user_activity", "data": {**GOOD_UA, "sender": claim}},
            {"kind": "command", "data": {"command_id": "c1", "shell": "system", "line": "id", "status": "success"}},
        ])
        assert [a["status"] for a in answers] == ["ok", "ok", "denied"], answers
        agent.wait_drained()
        rows = receiver.view("user-activity")
        assert len(rows) == 2
        for r in rows:
            prov = r["provenance"]
            assert prov["source"] == "hook" and prov["uid"] == uid and prov["user"] == name
            assert prov["exe"] and prov["exe"] != "/usr/sbin/sshd" and prov["pid"] != 1
            assert "sender" not in r
        assert [r["user"] for r in receiver.view("user-activity", provenance="hook", sender_uid=uid)] == ["root"] * 2
        assert receiver.view("user-activity", provenance="journal") == []

    def test_groups_in_the_policy(self, producer: tuple[str, int], agent_factory: Any,
                                  receiver: ReceiverProcess) -> None:
        """A push policy naming a group admits its members."""
        name, uid = producer
        group = f"pg{secrets.token_hex(3)}"
        subprocess.run(["groupadd", group], check=True, capture_output=True)
        try:
            subprocess.run(["usermod", "-aG", group, name], check=True, capture_output=True)
            agent = _open_socket_agent(agent_factory, receiver, name, push={"user_activity": {"groups": [group]}})
            code = ("import os, socket, sys, json, grp\n"
                    "os.setgroups([grp.getgrnam(sys.argv[3]).gr_gid]); os.setgid(int(sys.argv[2]));"
                    " os.setuid(int(sys.argv[2]))\n"
                    "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                    "s.sendall(json.dumps({'kind': 'user_activity', 'data': {'user': 'u', 'action': 'login',"
                    " 'result': 200}}).encode() + b'\\n')\n"
                    "print(s.makefile().readline())\n")
            import sys

            r = subprocess.run([sys.executable, "-c", code, agent.socket, str(uid), group], capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["status"] == "ok"
        finally:
            subprocess.run(["groupdel", group], capture_output=True)



# ----------------------------------------------------------------------------- the rule table

RULES = SenderRules({"sshd": frozenset({"/usr/sbin/sshd"}), "sudo": frozenset({"/usr/bin/sudo"}),
                     "su": frozenset({"/usr/bin/su"}), "login": frozenset({"/usr/bin/login"}),
                     "sftp-server": frozenset({"/usr/lib/openssh/sftp-server"}),
                     "systemd-logind": frozenset({"/usr/lib/systemd/systemd-logind"})})
CAPS = "1fffeffffff"  # what journald recorded for root and setuid programs in a container


def _who(uid: int, exe: str | None, comm: str, caps: str = "0", transport: str = "syslog") -> dict[str, Any]:
    out: dict[str, Any] = {"uid": uid, "gid": uid, "pid": 4000, "comm": comm, "cap_effective": caps,
                           "transport": transport}
    if exe is not None:
        out["exe"] = exe
    return out


class TestSenderRules:
    """Senders as journald recorded them for real OpenSSH 9, sudo 1.9 and su on Debian 12, and
    for an unprivileged user's tools."""

    @pytest.mark.parametrize(("program", "message", "who"), [
        ("sshd", ACCEPTED, _who(0, "/usr/sbin/sshd", "sshd", CAPS)),
        ("sshd", ACCEPTED, _who(0, "/usr/sbin/sshd (deleted)", "sshd", CAPS)),  # after a package upgrade
        ("sshd", ACCEPTED, _who(0, None, "sshd", CAPS)),  # exited before journald read /proc
        ("sudo", "u : PWD=/ ; USER=root ; COMMAND=/usr/bin/id", _who(1002, "/usr/bin/sudo", "sudo", CAPS)),
        ("sudo", "u : command not allowed ; PWD=/ ; USER=root ; COMMAND=/bin/cat", _who(1002, None, "sudo", CAPS)),
        ("su", "(to t) u on pts/0", _who(1002, "/usr/bin/su", "su", CAPS)),
        ("sudo", "pam_unix(sudo:session): session opened for user root(uid=0) by (uid=1002)",
         _who(1002, "/usr/bin/sudo", "sudo", CAPS)),
        ("login", "FAILED LOGIN (1) on '/dev/tty1' FOR 'root', x", _who(0, "/usr/bin/login", "login", CAPS)),
        ("sftp-server", "session opened for local user u from [127.0.0.1]",
         _who(1001, "/usr/lib/openssh/sftp-server", "sftp-server")),
        ("vsftpd", "pam_unix(vsftpd:session): session opened for user u(uid=1001) by (uid=0)",
         _who(0, "/usr/sbin/vsftpd", "vsftpd", CAPS)),
    ])
    def test_real_senders_fit(self, program: str, message: str, who: dict[str, Any]) -> None:
        """Each real program's own lines fit its rule."""
        assert RULES.check(program, message, who) is None

    @pytest.mark.parametrize(("program", "message", "who", "why"), [
        ("sshd", ACCEPTED, _who(1000, "/usr/bin/logger", "logger"), "runs as root"),
        ("sshd", ACCEPTED, _who(0, "/usr/bin/logger", "logger", CAPS), "not a sshd"),  # even root's logger
        ("sshd", ACCEPTED, _who(1000, None, "sshd"), "runs as root"),  # a renamed copy that exited
        ("sudo", "root : PWD=/ ; USER=root ; COMMAND=/bin/sh", _who(1000, None, "sudo"), "not privileged"),
        ("sudo", "root : PWD=/ ; USER=root ; COMMAND=/bin/sh", _who(1000, "/home/u/sudo", "sudo"), "not a sudo"),
        ("sudo", "root : PWD=/ ; USER=root ; COMMAND=/bin/sh", _who(1000, "/usr/bin/sudo", "sudo", CAPS, "stdout"),
         "logs through syslog"),  # its stderr on a stream the user opened (systemd-cat)
        ("su", "(to root) root on pts/0", _who(1000, "/usr/bin/logger", "logger"), "not a su"),
        ("cron", "pam_unix(login:session): session opened for user root(uid=0)", _who(1000, "/usr/bin/logger",
                                                                                      "logger"), "runs as root"),
        ("x", "pam_unix(vsftpd:session): session opened for user root(uid=0)", _who(1000, "/usr/bin/logger",
                                                                                    "logger"), "may not run PAM"),
        ("sftp-server", "session opened for local user root from [1.2.3.4]", _who(1000, "/usr/bin/logger",
                                                                                 "logger"), "not a sftp-server"),
        ("sftp-server", "session opened for local user u from [1.2.3.4]",
         _who(1000, "/usr/lib/openssh/sftp-server", "sftp-server", transport="stdout"), "logs through syslog"),
        ("systemd-logind", "New session 1 of user root.", _who(1000, "/usr/bin/logger", "logger"), "runs as root"),
        ("sshd", ACCEPTED, None, "no sender"),
    ])
    def test_forgeries_do_not_fit(self, program: str, message: str, who: dict[str, Any] | None, why: str) -> None:
        """An unprivileged user's tools, renamed copies and inherited streams do not fit, with a reason."""
        reason = RULES.check(program, message, who)
        assert reason is not None and why in reason, reason

    def test_sshd_session_child_is_neither_row_nor_forgery(self) -> None:
        """sshd's session child (running as the user) logs 'Disconnected from user': no row, not
        counted; the root monitor's pam line is the logout."""
        from collectors.derivers.auth import AuthDeriver
        from collectors.derivers.base import Witness

        d = AuthDeriver(witness=Witness(RULES))
        child = {"id": "jd-1", "kind": "system_log", "ts": "2026-11-26T20:00:00.000Z",
                 "data": {"program": "sshd", "pid": 17660, "level": "info", "hostname": "h",
                          "message": "Disconnected from user alice 127.0.0.1 port 47308",
                          "extra": {"sender": _who(1001, None, "sshd")}}}
        assert d(child) == [] and d.witness.forged == {}
        child["id"], child["data"]["extra"] = "jd-2", {"sender": _who(1001, "/usr/bin/logger", "logger")}
        assert d(child) == [] and d.witness.forged == {"sshd": 1}

    def test_executables_are_found_where_they_are(self, tmp_path: Path) -> None:
        """Executables are looked up in the known directories and extra ones, in resolved form too."""
        from collectors.derivers.provenance import discover_executables

        (tmp_path / "real").mkdir()
        exe = tmp_path / "real" / "sshd-session"
        exe.write_bytes(b"#!/bin/sh\n")
        exe.chmod(0o755)
        (tmp_path / "link").symlink_to(tmp_path / "real")
        found = discover_executables([str(tmp_path / "link")])
        assert {str(tmp_path / "link" / "sshd-session"), str(exe)} <= found["sshd-session"]
        assert os.path.realpath(subprocess.run(["which", "su"], capture_output=True, text=True).stdout.strip()) \
            in found["su"]

    def test_sftp_server_named_in_sshd_config(self) -> None:
        """The sftp-server an sshd configuration names counts as one (wherever it is installed)."""
        from collectors.derivers.provenance import sftp_servers_in

        conf = "Port 22\n  subsystem   sftp /opt/ssh/libexec/sftp-server -l INFO\nSubsystem sftp internal-sftp\n"
        assert sftp_servers_in(conf) == {"/opt/ssh/libexec/sftp-server"}


def _sftp(n: int, message: str, who: dict[str, Any], program: str = "sftp-server") -> dict[str, Any]:
    return {"id": f"jd-{n:06d}", "kind": "system_log", "ts": "2026-11-26T20:00:00.000Z",
            "data": {"program": program, "pid": who["pid"], "level": "info", "hostname": "h", "message": message,
                     "extra": {"sender": who}}}


class TestSftpSessions:
    """An sftp session is believed when its sender runs as the user it names, inside an ssh
    connection a root sshd accepted from the address it names."""

    SSHD = _who(0, "/usr/sbin/sshd", "sshd", CAPS)
    ALICE, BOB = 1001, 1002

    def _deriver(self) -> Any:
        from collectors.derivers.base import Witness
        from collectors.derivers.sftp import SftpDeriver

        users = {"alice": self.ALICE, "bob": self.BOB}
        d = SftpDeriver(witness=Witness(RULES), uid_of=users.get, lookup_user=lambda pid: None)
        assert d(_sftp(1, "Accepted publickey for alice from 192.0.2.1 port 5 ssh2", {**self.SSHD, "pid": 100},
                       "sshd")) == []
        return d

    def _session(self, d: Any, user: str, ip: str, uid: int) -> list[dict[str, Any]]:
        who = {**_who(uid, "/usr/lib/openssh/sftp-server", "sftp-server"), "pid": 5000 + uid}
        out = []
        for i, m in enumerate([f"session opened for local user {user} from [{ip}]", 'open "/etc/hostname" flags READ',
                               'close "/etc/hostname" bytes read 9 written 0',
                               f"session closed for local user {user} from [{ip}]"]):
            out += d(_sftp(10 + i + uid, m, who))
        return out

    def test_a_real_session_gives_rows_with_provenance(self) -> None:
        """alice's sftp-server inside alice's ssh connection from that address: a row naming alice."""
        rows = self._session(self._deriver(), "alice", "192.0.2.1", self.ALICE)
        assert [(r["data"]["username"], r["data"]["size"]) for r in rows] == [("alice", 9)]
        assert rows[0]["data"]["provenance"] == {"source": "journal", "uid": self.ALICE, "gid": self.ALICE,
                                                 "pid": 5000 + self.ALICE, "exe": "/usr/lib/openssh/sftp-server",
                                                 "comm": "sftp-server"}

    def test_a_session_naming_another_user_is_forged(self) -> None:
        """bob's sftp-server (under LD_PRELOAD, say) claiming alice's session: no row, every line counted."""
        d = self._deriver()
        assert self._session(d, "alice", "192.0.2.1", self.BOB) == []
        assert d.witness.forged == {"sftp-server": 4}

    def test_a_session_outside_any_ssh_connection_is_forged(self) -> None:
        """alice running sftp-server by hand with a made-up SSH_CONNECTION: no row, every line counted."""
        d = self._deriver()
        assert self._session(d, "alice", "203.0.113.66", self.ALICE) == []
        assert d.witness.forged == {"sftp-server": 4}
        # once forged, a later real session of the same user is still believed
        assert len(self._session(d, "alice", "192.0.2.1", self.ALICE)) == 1


class TestOutOfReach:
    def test_root_can_forge_anything(self, tmp_path: Path, agent_factory: Any, receiver: ReceiverProcess) -> None:
        """Root can write journal files with any 'trusted' field (here with systemd-journal-remote):
        the agent believes them, as docs/security.md says; the row names the sender it was given."""
        from tests.parts import write_journal_file

        need(os.access("/lib/systemd/systemd-journal-remote", os.X_OK), "systemd-journal-remote")
        jdir = tmp_path / "journal"
        write_journal_file(jdir / "forged.journal", [{
            "MESSAGE": "Accepted password for root from 203.0.113.250 port 4242 ssh2", "SYSLOG_IDENTIFIER": "sshd",
            "PRIORITY": "6", "_PID": "4242", "_UID": "0", "_GID": "0", "_COMM": "sshd", "_EXE": "/usr/sbin/sshd",
            "_CAP_EFFECTIVE": "1ffffffffff", "_TRANSPORT": "syslog", "_HOSTNAME": "web-01"}])
        agent = agent_factory(receiver, collectors={
            "journald": {"enabled": True, "directory": str(jdir), "start_at": "beginning"},
            "auth": {"enabled": True}})
        agent.start()
        rows = wait_until(lambda: receiver.view("user-activity"), 30, what="the row root forged")
        assert [(r["user"], r["ip"], r["provenance"]["uid"], r["provenance"]["pid"]) for r in rows] == [
            ("root", "203.0.113.250", 0, 4242)]
        line = wait_until(lambda: receiver.view("system-logs", program="sshd"), 30, what="the line")[0]
        assert line["extra"]["sender"]["exe"] == "/usr/sbin/sshd"


class TestVsftpdJournalLines:
    """vsftpd's transfer lines (syslog_enable=YES) come from its session process as the user."""

    def _line(self, n: int, who: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"jd-{n:04d}", "kind": "system_log", "ts": "2026-11-26T20:00:00.000Z",
                "data": {"program": "vsftpd", "pid": who["pid"], "level": "info", "hostname": "h",
                         "message": VSFTPD_LINE.replace("[root]", "[alice]"), "extra": {"sender": who}}}

    def test_only_vsftpd_as_the_user_it_names(self) -> None:
        """alice's vsftpd session: a row with provenance; bob's vsftpd naming alice, or logger: none."""
        from collectors.derivers.base import Witness
        from collectors.derivers.ftp import FtpTransferDeriver

        rules = SenderRules({"vsftpd": frozenset({"/usr/sbin/vsftpd"})})
        d = FtpTransferDeriver(witness=Witness(rules), uid_of={"alice": 1001}.get)
        rows = d(self._line(1, _who(1001, "/usr/sbin/vsftpd", "vsftpd")))
        assert [(r["data"]["username"], r["data"]["provenance"]["uid"]) for r in rows] == [("alice", 1001)]
        assert d(self._line(2, _who(1002, "/usr/sbin/vsftpd", "vsftpd"))) == []
        assert d(self._line(3, _who(1001, "/usr/bin/logger", "logger"))) == []
        assert sum(d.witness.forged.values()) == 2
