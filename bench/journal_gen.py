"""A realistic journal for the benchmarks: entries as journald records them on a web server.

The mix by weight is nginx (stdout) 26, sshd 24, systemd PID 1 14, kernel 12, cron 12, sudo 5,
systemd-logind 4 and dbus-daemon 3; priorities 0-7 all occur, mostly 6. Non-kernel entries
carry 20-26 fields (``_PID _UID _GID _COMM _EXE _CMDLINE _CAP_EFFECTIVE _SYSTEMD_UNIT
_SYSTEMD_CGROUP _SYSTEMD_SLICE _SYSTEMD_INVOCATION_ID SYSLOG_IDENTIFIER SYSLOG_FACILITY
_TRANSPORT _HOSTNAME _MACHINE_ID _BOOT_ID`` and more: ``CODE_*``, ``MESSAGE_ID`` and ``UNIT``
from PID 1, ``SYSLOG_PID`` and ``SYSLOG_TIMESTAMP`` from syslog senders); kernel entries, as in
real journals, have no ``_PID``/``_COMM``/``_SYSTEMD_UNIT`` and 9 fields. MESSAGE is 60-200
bytes and ends in a unique `` seq=<i>``. The output is deterministic for N and the seed.

Usage: ``write_journal(directory, n)``, or ``python bench/journal_gen.py N DIR`` (then
``journalctl -D DIR -n 3 -o verbose`` to look at it).
"""

# ruff: noqa: E501 - message templates are easier to read whole

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SEQ_FMT = " seq={}"
MIN_MSG, MAX_MSG = 60, 200
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
HOST = "web-prod-03"
MACHINE_ID = "5c2d1f0e8b7a4c3d9e6f1a2b3c4d5e6f"
BOOT_ID = "8f3e2a1b0c9d4e5f8a7b6c5d4e3f2a1b"
# 2026-11-25T00:00:00Z, boot happened 3 days earlier
START_US = 1795564800 * 1_000_000
BOOT_US = START_US - 3 * 86400 * 1_000_000

USERS = ["alice", "bob", "deploy", "ci-runner", "postgres", "www-data"]
BADUSERS = ["admin", "test", "oracle", "ubuntu", "pi", "guest", "ftpuser", "user1"]
PATHS = ["/", "/api/v1/items", "/api/v1/items/42", "/api/v1/orders?page=3&limit=50", "/healthz",
         "/static/app.3f9c1e.js", "/static/css/main.css", "/login", "/api/v2/search?q=widgets",
         "/favicon.ico", "/metrics", "/wp-login.php", "/.env", "/robots.txt"]
UAS = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
       "kube-probe/1.29", "Prometheus/2.48.1", "python-requests/2.31.0", "Go-http-client/1.1"]
UNITS_TIMER = ["apt-daily.service", "logrotate.service", "man-db.service", "fstrim.service",
               "certbot.service", "systemd-tmpfiles-clean.service", "backup.service"]
DESC = {"apt-daily.service": "Daily apt download activities", "logrotate.service": "Rotate log files",
        "man-db.service": "Daily man-db regeneration", "fstrim.service": "Discard unused blocks on filesystems",
        "certbot.service": "Certbot", "systemd-tmpfiles-clean.service": "Cleanup of Temporary Directories",
        "backup.service": "Nightly database backup"}
CRONCMDS = ["cd / && run-parts --report /etc/cron.hourly", "/usr/local/bin/rotate-sessions.sh",
            "[ -x /usr/lib/php/sessionclean ] && /usr/lib/php/sessionclean",
            "test -x /usr/sbin/anacron || ( cd / && run-parts --report /etc/cron.daily )",
            "/opt/app/bin/cleanup --older-than 7d"]

MSGID_STARTED = "39f53479d3a045ac8e11786248231fbf"
MSGID_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
MSGID_FINISHED = "7ad2d189f7e94e70a38c781354912448"  # unit deactivated successfully
MSGID_SESSION = "8d45620c1a4348dbb17410da57c60c66"


def ip(r):
    return f"{r.choice([10, 172, 192, 203, 198, 45])}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"


def hexs(r, n):
    return "".join(r.choice("0123456789abcdef") for _ in range(n))


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        r = self.r
        self.sshd_pids = [r.randrange(2000, 60000) for _ in range(40)]
        self.nginx_pids = [r.randrange(600, 900) for _ in range(2)]
        self.inv = {u: hexs(r, 32) for u in ["ssh.service", "nginx.service", "cron.service",
                                             "systemd-logind.service", "dbus.service"] + UNITS_TIMER}
        self.stream_id = hexs(r, 32)
        self.session = 4100

    # ---------- message bodies (without the seq suffix) ----------
    def m_sshd(self):
        r = self.r
        k = r.random()
        if k < 0.35:
            return 6, f"Accepted publickey for {r.choice(USERS)} from {ip(r)} port {r.randrange(1024, 65535)} ssh2: ED25519 SHA256:{hexs(r, 20)}"
        if k < 0.6:
            return 6, f"Failed password for invalid user {r.choice(BADUSERS)} from {ip(r)} port {r.randrange(1024, 65535)} ssh2"
        if k < 0.75:
            return 6, f"pam_unix(sshd:session): session opened for user {r.choice(USERS)}(uid={r.randrange(1000, 1010)}) by (uid=0)"
        if k < 0.85:
            return 6, f"Received disconnect from {ip(r)} port {r.randrange(1024, 65535)}:11: disconnected by user"
        if k < 0.95:
            return 5, f"Connection closed by authenticating user root {ip(r)} port {r.randrange(1024, 65535)} [preauth]"
        return 3, f"error: kex_exchange_identification: Connection closed by remote host from {ip(r)}"

    def m_sudo(self):
        r = self.r
        u = r.choice(USERS[:4])
        if r.random() < 0.85:
            cmd = r.choice(["/usr/bin/systemctl restart nginx", "/usr/bin/journalctl -u app -f",
                            "/usr/bin/apt-get upgrade -y", "/bin/cat /var/log/auth.log",
                            "/usr/bin/docker ps -a"])
            return 5, f"    {u} : TTY=pts/{r.randrange(6)} ; PWD=/home/{u} ; USER=root ; COMMAND={cmd}"
        return 1, f"    {u} : 3 incorrect password attempts ; TTY=pts/{r.randrange(6)} ; PWD=/home/{u} ; USER=root ; COMMAND=/bin/bash"

    def m_nginx(self, ts_us):
        r = self.r
        k = r.random()
        t = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ts_us / 1e6))
        if k < 0.9:
            st = r.choices([200, 200, 200, 304, 301, 404, 499, 500, 502], k=1)[0]
            pri = 6 if st < 500 else 4
            return pri, (f'{ip(r)} - - [{t}] "{r.choice(["GET", "GET", "POST", "PUT"])} {r.choice(PATHS)} HTTP/1.1" '
                         f'{st} {r.randrange(0, 40000)} "-" "{r.choice(UAS)}"')
        return 3, (f'{time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(ts_us / 1e6))} [error] {self.nginx_pids[1]}#0: '
                   f'*{r.randrange(1, 999999)} upstream timed out (110) while reading response header from upstream')

    def m_kernel(self):
        r = self.r
        k = r.random()
        if k < 0.6:
            return 4, (f"[UFW BLOCK] IN=eth0 OUT= MAC=52:54:00:{hexs(r, 2)}:{hexs(r, 2)}:{hexs(r, 2)} SRC={ip(r)} "
                       f"DST=10.0.0.3 LEN={r.randrange(40, 1500)} TTL={r.randrange(30, 250)} PROTO=TCP DPT={r.choice([22, 23, 3389, 5432, 8080])}")
        if k < 0.8:
            return 6, f"EXT4-fs (vda1): mounted filesystem {hexs(r, 8)}-{hexs(r, 4)} r/w with ordered data mode. Quota mode: none."
        if k < 0.9:
            return 7, f"audit: type=1400 audit({r.randrange(10**9, 2 * 10**9)}.{r.randrange(1000)}:{r.randrange(10**5)}): apparmor=\"STATUS\" operation=\"profile_load\""
        if k < 0.97:
            return 3, f"Out of memory: Killed process {r.randrange(1000, 60000)} (java) total-vm:{r.randrange(10**6, 10**7)}kB, anon-rss:{r.randrange(10**5, 10**6)}kB"
        return r.choice([0, 2]), f"BUG: soft lockup - CPU#{r.randrange(2)} stuck for {r.randrange(22, 90)}s! [kworker/u4:{r.randrange(9)}:{r.randrange(100, 999)}]"

    def m_cron(self):
        r = self.r
        k = r.random()
        if k < 0.5:
            return 6, f"({r.choice(['root', 'www-data', 'postgres'])}) CMD ({r.choice(CRONCMDS)})"
        if k < 0.9:
            return 6, "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
        return 6, "pam_unix(cron:session): session closed for user root"

    def m_systemd(self):
        r = self.r
        u = r.choice(UNITS_TIMER)
        k = r.random()
        if k < 0.3:
            return 6, f"Starting {DESC[u]}...", u, MSGID_STARTING, "unit_start"
        if k < 0.6:
            return 6, f"Finished {DESC[u]}.", u, MSGID_STARTED, "job_emit_done_message"
        if k < 0.85:
            return 6, f"{u}: Deactivated successfully.", u, MSGID_FINISHED, "unit_log_success"
        if k < 0.97:
            return 6, f"{u}: Consumed {r.randrange(1, 900)}ms CPU time.", u, None, "unit_log_resources"
        return 3, f"{u}: Failed with result 'exit-code'.", u, None, "unit_log_failure"

    # ---------- entries ----------
    def entry(self, i, rt_us):
        """returns list of (field, value) for entry i (export-format order is irrelevant)."""
        r = self.r
        mono = rt_us - BOOT_US
        prog = r.choices(["sshd", "nginx", "kernel", "cron", "systemd", "sudo", "systemd-logind", "dbus-daemon"],
                         weights=[24, 26, 12, 12, 14, 5, 4, 3])[0]
        f = [("__REALTIME_TIMESTAMP", rt_us), ("__MONOTONIC_TIMESTAMP", mono), ("_BOOT_ID", BOOT_ID)]
        src_rt = rt_us - r.randrange(5, 400)
        if prog == "kernel":
            pri, msg = self.m_kernel()
            f += [("_SOURCE_MONOTONIC_TIMESTAMP", mono - r.randrange(5, 400)), ("_TRANSPORT", "kernel"),
                  ("PRIORITY", pri), ("SYSLOG_FACILITY", 0), ("SYSLOG_IDENTIFIER", "kernel")]
            return self._finish(f, msg, i)
        extra = []
        if prog == "sshd":
            pri, msg = self.m_sshd()
            pid = r.choice(self.sshd_pids)
            unit, comm, exe, cmd = "ssh.service", "sshd", "/usr/sbin/sshd", f"sshd: {r.choice(USERS)} [priv]"
            fac, transport, uid = 4, "syslog", 0
        elif prog == "sudo":
            pri, msg = self.m_sudo()
            pid = r.randrange(2000, 60000)
            unit, comm, exe, cmd = f"session-{self.session}.scope", "sudo", "/usr/bin/sudo", "sudo systemctl restart nginx"
            fac, transport, uid = 10, "syslog", 0
        elif prog == "cron":
            pri, msg = self.m_cron()
            pid = r.randrange(2000, 60000)
            unit, comm, exe, cmd = "cron.service", "cron", "/usr/sbin/cron", "/usr/sbin/CRON -f -P"
            fac, transport, uid = 9, "syslog", 0
        elif prog == "nginx":
            pri, msg = self.m_nginx(rt_us)
            pid = r.choice(self.nginx_pids)
            unit, comm, exe, cmd = "nginx.service", "nginx", "/usr/sbin/nginx", "nginx: worker process"
            fac, transport, uid = 3, "stdout", 33
            extra = [("_STREAM_ID", self.stream_id)]
        elif prog == "systemd":
            pri, msg, u, msgid, func = self.m_systemd()
            pid = 1
            unit, comm, exe, cmd = "init.scope", "systemd", "/usr/lib/systemd/systemd", "/sbin/init"
            fac, transport, uid = 3, "journal", 0
            extra = [("CODE_FILE", "src/core/unit.c"), ("CODE_LINE", r.randrange(2000, 6000)), ("CODE_FUNC", func),
                     ("UNIT", u), ("INVOCATION_ID", self.inv[u]), ("TID", 1), ("_SOURCE_REALTIME_TIMESTAMP", src_rt)]
            if msgid:
                extra.append(("MESSAGE_ID", msgid))
            if r.random() < 0.1:
                pri = 7
        elif prog == "systemd-logind":
            self.session += 1 if r.random() < 0.5 else 0
            pri, msg = 6, f"New session {self.session} of user {r.choice(USERS[:4])}."
            pid = 412
            unit, comm, exe, cmd = "systemd-logind.service", "systemd-logind", "/usr/lib/systemd/systemd-logind", "/lib/systemd/systemd-logind"
            fac, transport, uid = 4, "journal", 0
            extra = [("MESSAGE_ID", MSGID_SESSION), ("SESSION_ID", self.session), ("LEADER", r.randrange(2000, 60000)),
                     ("CODE_FILE", "src/login/logind-session.c"), ("CODE_LINE", 780), ("CODE_FUNC", "session_start"),
                     ("_SOURCE_REALTIME_TIMESTAMP", src_rt)]
        else:  # dbus-daemon
            pri = r.choice([5, 6, 7])
            msg = f"[system] Activating via systemd: service name='org.freedesktop.{r.choice(['hostname1', 'timedate1', 'locale1'])}' unit='dbus-org.freedesktop.service' requested by ':1.{r.randrange(9, 999)}'"
            pid = 398
            unit, comm, exe, cmd = "dbus.service", "dbus-daemon", "/usr/bin/dbus-daemon", "/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only"
            fac, transport, uid = 4, "syslog", 101
        if unit.startswith("session-"):
            cg, slice_ = f"/user.slice/user-1000.slice/{unit}", "user-1000.slice"
        else:
            cg, slice_ = f"/system.slice/{unit}" if unit != "init.scope" else "/init.scope", "system.slice" if unit != "init.scope" else "-.slice"
        f += [("PRIORITY", pri), ("SYSLOG_FACILITY", fac),
              ("SYSLOG_IDENTIFIER", prog), ("_TRANSPORT", transport),
              ("_PID", pid), ("_UID", uid), ("_GID", uid), ("_COMM", comm), ("_EXE", exe), ("_CMDLINE", cmd),
              ("_CAP_EFFECTIVE", "1ffffffffff" if uid == 0 else "0"),
              ("_SYSTEMD_CGROUP", cg), ("_SYSTEMD_UNIT", unit), ("_SYSTEMD_SLICE", slice_)]
        if transport != "kernel" and unit in self.inv:
            f.append(("_SYSTEMD_INVOCATION_ID", self.inv[unit]))
        if transport == "syslog":
            f += [("SYSLOG_PID", pid), ("SYSLOG_TIMESTAMP", time.strftime("%b %d %H:%M:%S ", time.gmtime(rt_us / 1e6))),
                  ("_SOURCE_REALTIME_TIMESTAMP", src_rt)]
        f += extra
        return self._finish(f, msg, i)

    def _finish(self, f, msg, i):
        suffix = SEQ_FMT.format(i)
        room = MAX_MSG - len(suffix)
        body = msg.encode()
        if len(body) > room:
            body = body[:room].rstrip()
        pad = [b" request_id=", b" trace=", b" span=", b" host=" + HOST.encode()]
        k = 0
        while len(body) + len(suffix) < MIN_MSG:
            body += pad[k % 4] + hexs(self.r, 8).encode() if k % 4 < 3 else pad[3]
            k += 1
        m = body + suffix.encode()
        assert MIN_MSG <= len(m) <= MAX_MSG, (len(m), m)
        f += [("_HOSTNAME", HOST), ("_MACHINE_ID", MACHINE_ID), ("MESSAGE", m)]
        return f


def export_stream(n: int, seed: int, out: Any) -> None:
    """Write ``n`` entries in journal export format to the binary stream ``out``."""
    g = Gen(seed)
    r = g.r
    rt = START_US
    buf = []
    for i in range(n):
        rt += r.randrange(200, 4000)  # ~ 2 ms apart on average
        lines = []
        for k, v in g.entry(i, rt):
            lines.append(k.encode() + b"=" + v if isinstance(v, bytes) else f"{k}={v}".encode())
        buf.append(b"\n".join(lines) + b"\n\n")
        if len(buf) >= 2000:
            out.write(b"".join(buf))
            buf.clear()
    out.write(b"".join(buf))
    out.flush()


def write_journal(directory: Path, n: int, seed: int = 20261126) -> None:
    """``n`` entries into the journal directory ``directory`` (journal-remote may make several files)."""
    directory.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([JOURNAL_REMOTE, f"--output={directory / 'remote.journal'}", "-"],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stderr is not None
    export_stream(n, seed, p.stdin)
    p.stdin.close()
    err = p.stderr.read().decode(errors="replace")
    if p.wait() != 0:
        raise RuntimeError(f"systemd-journal-remote failed: {err}")


if __name__ == "__main__":
    write_journal(Path(sys.argv[2]), int(sys.argv[1]))
