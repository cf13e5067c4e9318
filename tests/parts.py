"""Real parts for tests and benchmarks: a live journald in its own mount namespace, a standalone
rsyslog in a temp dir, and journal files written by systemd-journal-remote.

Each part is a small class with ``start()`` / ``stop()`` (and a context manager); nothing here
touches the host's own journald or rsyslog. See DESIGN.md "Testing with real parts".
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

JOURNALD = "/lib/systemd/systemd-journald"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
BOOT_ID = "0123456789abcdef0123456789abcdef"

FieldValue = str | bytes | int | list[str | bytes]


def _wait_path(path: Path, proc: subprocess.Popen[Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {path}")
        time.sleep(0.02)


def _stop_proc(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------- journal files


def export_entry(fields: Mapping[str, FieldValue]) -> bytes:
    """One entry in the journal export format (binary-safe for values with newlines or NULs)."""
    out = bytearray()
    # a list value: the field given once per item (journald keeps duplicated fields)
    pairs = [(k, x) for k, v in fields.items() for x in (v if isinstance(v, list) else [v])]
    for key, value in pairs:
        if isinstance(value, int):
            value = str(value)
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if b"\n" in raw or any(c < 0x20 and c != 0x09 for c in raw) or any(c >= 0x80 for c in raw):
            out += key.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key.encode() + b"=" + raw + b"\n"
    out += b"\n"
    return bytes(out)


class JournalFileWriter:
    """Streams entries into ``systemd-journal-remote --output=PATH -`` (a real journal file).

    Fills in ``__REALTIME_TIMESTAMP`` (1 µs apart from ``start_usec``, default now), an
    increasing ``__MONOTONIC_TIMESTAMP`` (realtime minus a constant, so a file written for later
    times sorts after earlier ones of the same boot) and ``_BOOT_ID`` when an entry lacks them.
    """

    def __init__(self, path: str | os.PathLike[str], start_usec: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.name.endswith(".journal"):
            raise ValueError("journal file names must end in .journal")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.usec = start_usec if start_usec is not None else int(time.time() * 1e6)
        # tied to realtime, so files written for later times also sort later within the boot
        self.mono = self.usec - 1_700_000_000_000_000
        self.count = 0
        self._buf = bytearray()
        self._proc = subprocess.Popen(
            [JOURNAL_REMOTE, f"--output={self.path}", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def add(self, fields: Mapping[str, FieldValue]) -> None:
        """Append one entry."""
        full: dict[str, FieldValue] = {}
        if "__REALTIME_TIMESTAMP" not in fields:
            full["__REALTIME_TIMESTAMP"] = self.usec
        if "__MONOTONIC_TIMESTAMP" not in fields:
            full["__MONOTONIC_TIMESTAMP"] = self.mono
        if "_BOOT_ID" not in fields:
            full["_BOOT_ID"] = BOOT_ID
        full.update(fields)
        self.usec += 1
        self.mono += 1
        self.count += 1
        self._buf += export_entry(full)
        if len(self._buf) > 1 << 20:
            self._flush()

    def _flush(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(self._buf)
        self._buf.clear()

    def close(self) -> Path:
        """Finish the file; raises if systemd-journal-remote failed."""
        self._flush()
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        err = self._proc.stderr.read() if self._proc.stderr else b""
        rc = self._proc.wait(120)
        if rc != 0:
            raise RuntimeError(f"systemd-journal-remote failed ({rc}): {err.decode(errors='replace')}")
        return self.path

    def __enter__(self) -> JournalFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_journal_file(
    path: str | os.PathLike[str],
    entries: Iterable[Mapping[str, FieldValue]],
    start_usec: int | None = None,
) -> Path:
    """Write ``entries`` (field dicts) into a real journal file at ``path`` (``…/name.journal``)."""
    w = JournalFileWriter(path, start_usec)
    for e in entries:
        w.add(e)
    return w.close()


# --------------------------------------------------------------------------- live journald

JOURNALD_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
RateLimitIntervalSec=0
RateLimitBurst=0
RuntimeMaxFileSize={max_file_size}
ForwardToSyslog=no
ForwardToWall=no
ForwardToConsole=no
MaxLevelStore=debug
"""

_SEND_SCRIPT = """\
import sys, orjson
from systemd import journal
for line in sys.stdin.buffer:
    fields = orjson.loads(line)
    args = []
    for k, v in fields.items():
        if isinstance(v, list):
            args.append(k.encode() + b"=" + bytes(v))
        else:
            args.append(k.encode() + b"=" + str(v).encode())
    journal.sendv(*args)
"""


class LiveJournald:
    """A real systemd-journald in a private mount namespace rooted in ``root``.

    Its files appear under :attr:`journal_dir` (``root/run/log/journal``); :meth:`run` executes a
    program inside the namespace, where ``logger``, ``systemd-cat``, ``journal.send`` and
    ``journalctl --rotate`` all talk to this journald.
    """

    def __init__(self, root: str | os.PathLike[str], max_file_size: str = "8M") -> None:
        self.root = Path(root)
        self.max_file_size = max_file_size
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def journal_dir(self) -> Path:
        return self.root / "run" / "log" / "journal"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "journald not started"
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> LiveJournald:
        """Start journald (again after :meth:`stop`; the journal files stay)."""
        for d in ("run", "log", "etc"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        conf = self.root / "etc" / "journald.conf"
        conf.write_text(JOURNALD_CONF.format(max_file_size=self.max_file_size))
        sock = self.root / "run" / "systemd" / "journal" / "socket"
        if sock.exists():
            sock.unlink()
        script = (
            f"mount --bind {self.root}/run /run && "
            f"mount --bind {self.root}/log /var/log/journal && "
            f"mount --bind {conf} /etc/systemd/journald.conf && "
            "mkdir -p /run/systemd/journal /run/log/journal && "
            f"exec {JOURNALD}"
        )
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "journald.err", "ab"),  # noqa: SIM115 - owned by the child
            start_new_session=True,
        )
        _wait_path(sock, self.proc, timeout, "systemd-journald")
        # the stdout stream socket appears last; after it journald serves all sockets
        _wait_path(self.root / "run" / "systemd" / "journal" / "stdout", self.proc, timeout, "systemd-journald")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop journald by its PID."""
        _stop_proc(self.proc, sig)

    def restart(self) -> None:
        """Stop and start journald (a journald restart, as on a package upgrade)."""
        self.stop()
        self.start()

    def run(
        self, args: list[str], input: bytes | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``args`` inside journald's mount namespace."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", *args],
            input=input,
            capture_output=True,
            check=check,
            timeout=timeout,
        )

    def popen(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` inside journald's mount namespace."""
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-m", *args], **kw)

    def logger(self, *messages: str, tag: str = "test", priority: str = "user.info") -> None:
        """Log through ``logger`` (the syslog socket), one entry per message (no newlines in them)."""
        self.run(
            ["logger", "--socket", "/run/systemd/journal/dev-log", "--socket-errors=on", "-t", tag, "-p", priority],
            input="".join(m + "\n" for m in messages).encode(),
        )

    def send(self, entries: Iterable[Mapping[str, FieldValue | bytes]]) -> None:
        """Send entries with systemd-python's ``journal.sendv`` (native protocol, binary-safe)."""
        import orjson

        lines = []
        for e in entries:
            lines.append(orjson.dumps({k: list(v) if isinstance(v, bytes) else v for k, v in e.items()}))
        self.run([sys.executable, "-c", _SEND_SCRIPT], input=b"\n".join(lines) + b"\n")

    def rotate(self) -> None:
        """``journalctl --rotate`` against this journald."""
        self.run(["journalctl", "--rotate"])

    def sync(self) -> None:
        """``journalctl --sync``: everything received so far is written to the files."""
        self.run(["journalctl", "--sync"])

    def vacuum_files(self, keep: int = 1) -> None:
        """Delete archived journal files, keeping the ``keep`` newest (plus the active one)."""
        subprocess.run(
            ["journalctl", "-D", str(self.journal_dir), f"--vacuum-files={keep}"],
            capture_output=True,
            check=True,
            timeout=60,
        )

    def archived_files(self) -> list[Path]:
        return sorted(self.journal_dir.glob("*/*@*.journal"))

    def __enter__(self) -> LiveJournald:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- rsyslog

RSYSLOG_CONF = """\
global(workDirectory="{root}/work" maxMessageSize="{max_message_size}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" CreatePath="on" RateLimit.Interval="0")
template(name="Traditional" type="string"
         string="%TIMESTAMP% %HOSTNAME% %syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n")
*.* action(type="omfile" file="{root}/log/syslog" template="RSYSLOG_FileFormat")
*.* action(type="omfile" file="{root}/log/traditional.log" template="Traditional")
"""


class RsyslogInstance:
    """A standalone rsyslogd (``-n -f CONF -i PIDFILE``) with an imuxsock socket and omfile outputs.

    :attr:`syslog_path` gets lines in Debian 12's format (RFC 3339 high-precision timestamps),
    :attr:`traditional_path` in the traditional RFC 3164 one. Send with :meth:`send`.
    """

    def __init__(self, root: str | os.PathLike[str], max_message_size: int = 262144) -> None:
        self.root = Path(root)
        self.max_message_size = max_message_size
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "dev-log"

    @property
    def syslog_path(self) -> Path:
        return self.root / "log" / "syslog"

    @property
    def traditional_path(self) -> Path:
        return self.root / "log" / "traditional.log"

    def start(self, timeout: float = 15.0) -> RsyslogInstance:
        for d in ("work", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        conf = self.root / "rsyslog.conf"
        conf.write_text(
            RSYSLOG_CONF.format(root=self.root, socket=self.socket_path, max_message_size=self.max_message_size)
        )
        if self.socket_path.exists():
            self.socket_path.unlink()
        rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        self.proc = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(conf), "-i", str(self.root / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "rsyslogd.err", "ab"),  # noqa: SIM115 - owned by the child
            start_new_session=True,
        )
        _wait_path(self.socket_path, self.proc, timeout, "rsyslogd")
        return self

    def send(
        self, message: str | bytes, tag: str = "test", pid: int | None = None, facility: int = 1, severity: int = 6
    ) -> None:
        """Send one message over the socket as ``<PRI>TAG[PID]: MESSAGE`` (like syslog(3))."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.connect(str(self.socket_path))
        body = message.encode() if isinstance(message, str) else message
        head = f"<{facility * 8 + severity}>{tag}" + (f"[{pid}]" if pid is not None else "") + ": "
        self._sock.send(head.encode() + body)

    def reopen(self) -> None:
        """SIGHUP: rsyslog closes its files and reopens them on the next write (as logrotate does)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        _stop_proc(self.proc)

    def __enter__(self) -> RsyslogInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- collector runs


class EmitRecorder:
    """A fake pipeline for collector unit tests: records every emit and keeps the checkpoints.

    ``context()`` gives a real :class:`~agent.collector.CollectorContext` whose ``emit_fn``
    appends here; pass the same ``checkpoints`` to a later context to simulate a restart
    (everything emitted counts as committed).
    """

    def __init__(self, checkpoints: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.calls: list[tuple[list[dict[str, Any]], Any]] = []
        self.checkpoints: dict[str, str] = dict(checkpoints or {})
        self.counts: dict[str, int] = {}
        #: emit_prepared calls seen; their system_log events are schema-checked unless not strict
        self.prepared_calls = 0
        self.strict = True
        #: an ``agent.pipeline.encode.Prepared`` to hand out instead of the default one
        self.prepared_settings: Any = None
        #: the number of events recorded at each ``caught_up`` (the end of a backlog)
        self.caught_up_at: list[int] = []

    async def emit(self, events: list[Any], checkpoint: Any) -> None:
        self.calls.append((list(events), checkpoint))
        self.events.extend(events)
        if checkpoint is not None:
            self.checkpoints[checkpoint.source] = checkpoint.position

    async def emit_prepared(self, items: list[tuple[str, bytes, int]], checkpoint: Any) -> None:
        """The fast path: each item's JSON is decoded back into its event, checked against its
        kind (and, for the collectors' own ``system_log`` lines, the schema) and recorded like
        an ``emit``; derived events pass as they are, as with ``emit``."""
        import orjson

        from agent.schema import validate_event

        events = []
        for kind, blob, n in items:
            batch = orjson.loads(b"[" + blob + b"]")
            assert len(batch) == n >= 1, (n, batch)
            for ev in batch:
                assert ev["kind"] == kind, (kind, ev)
                if self.strict and kind == "system_log":
                    validate_event(ev)
            events.extend(batch)
        self.prepared_calls += 1
        await self.emit(events, checkpoint)

    def prepared(self) -> Any:
        """The settings a pipeline with the default config would give (builtin redaction, with the
        trigger words that let the compiled readers finish lines themselves)."""
        from agent.pipeline.encode import Prepared
        from agent.pipeline.processors import Filter
        from agent.pipeline.redact import Redactor

        r = Redactor()
        return self.prepared_settings or Prepared("test", r.redact_text, Filter(), r.changed_lines, 7, 4096,
                                                  r.changed_texts, r.trigger_words())

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def context(self, once: bool = False, derivers: list[Any] | None = None) -> Any:
        from agent.collector import CollectorContext
        from collectors.derivers.base import line_gate

        return CollectorContext(
            server="test",
            emit_fn=self.emit,
            checkpoints=dict(self.checkpoints),
            once=once,
            counter=self.count,
            derivers=derivers or [],
            line_gate=line_gate(derivers or []),
            emit_prepared_fn=self.emit_prepared,
            prepared_fn=self.prepared,
            caught_up_fn=lambda: self.caught_up_at.append(len(self.events)),
        )

    def messages(self, program: str | None = None) -> list[str]:
        return [
            e["data"]["message"]
            for e in self.events
            if e["kind"] == "system_log" and (program is None or e["data"]["program"] == program)
        ]


async def crash_then_run_again(collector: Any, rec: EmitRecorder) -> None:
    """What the service does with a collector whose emit fails: ``run`` raises, ``aclose``,
    then it runs again (here once, to the end) from the checkpoints committed so far."""
    import pytest

    fails = [RuntimeError("the spool write failed")]
    recorded = collector.ctx.emit_prepared_fn

    async def emit_prepared(items: Any, checkpoint: Any) -> None:
        if fails:
            raise fails.pop()
        await recorded(items, checkpoint)

    collector.ctx.emit_prepared_fn = emit_prepared
    with pytest.raises(RuntimeError):
        await collector.run()
    await collector.aclose()
    assert rec.events == [], "nothing was emitted before the failure"
    collector.ctx.checkpoints = dict(rec.checkpoints)
    await run_once(collector)


async def run_once(collector: Any) -> None:
    """Run a collector built with ``once=True`` to the end of its source, then close it."""
    import asyncio

    try:
        await asyncio.wait_for(collector.run(), 60)
    finally:
        await collector.aclose()


async def until(pred: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Async polling: wait until ``pred()`` is truthy; fail with ``what`` after ``timeout`` s."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def count_lines(path: Path) -> int:
    """Number of complete lines in ``path`` (0 when it does not exist)."""
    try:
        with open(path, "rb") as f:
            return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def wait_lines(path: Path, n: int, timeout: float = 30.0) -> None:
    """Wait until ``path`` holds at least ``n`` complete lines."""
    deadline = time.monotonic() + timeout
    while count_lines(path) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has {count_lines(path)} lines, expected {n}")
        time.sleep(0.02)


__all__ = [
    "BOOT_ID",
    "EmitRecorder",
    "JournalFileWriter",
    "LiveJournald",
    "RsyslogInstance",
    "count_lines",
    "export_entry",
    "run_once",
    "until",
    "wait_lines",
    "write_journal_file",
]
