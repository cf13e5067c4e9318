"""Hostile input at the agent's boundaries and faults in its parts, played by the adversary or the
unlucky operator: each case, against the real agent, asserts the bound, the refusal or the loud
failure, not only that nothing crashed. One class per boundary or defect."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import MAX_CONFIG_BYTES, load_config
from agent.errors import ConfigError
from agent.hookclient import HookClient
from agent.safeyaml import MAX_ALIAS_NODES, PyBudgetLoader, YAMLBudgetError
from agent.tokenfile import MAX_TOKEN_BYTES
from collectors.derivers.auth import AuthDeriver
from collectors.derivers.base import Witness
from collectors.derivers.sftp import MAX_OPEN_FILES, MAX_STATE_BYTES, SftpDeriver
from tests.harness import AgentProcess, ReceiverProcess, agent_config
from tests.parts import JOURNALD, LiveJournald
from tests.senders import Intruder, internal_count, sender
from tests.support import need, need_binary, need_root, throwaway_user, wait_until

BIN = Path(sys.executable).parent / "alpacon-agent"
EVENT = {"user": "carol", "action": "login", "result": 200}


def alias_bomb(key: str = "log_level", levels: int = 9) -> str:
    """The billion laughs in YAML: a few hundred bytes that expand to 9**levels scalars under ``key``."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\n{key}: *l{levels - 1}\n"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "check-config", str(path)], capture_output=True, text=True, timeout=60)


def bytes_read_by_this_process() -> int:
    """rchar of /proc/self/io: every byte this process has read by read(2) and friends."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


class TestConfigHazards:
    @pytest.mark.parametrize("key", ["log_level", "hook:\n  allow_users", "redact:\n  patterns", "server"])
    def test_alias_bomb_is_refused_with_a_short_error(self, tmp_path: Path, key: str) -> None:
        """An alias bomb anywhere is refused by check-config while composing, with a line number; the error
        is short (the expansion is never built, walked or repr()'d)."""
        text = alias_bomb(key.split(":")[0] if ":" in key else key)
        if ":" in key:  # nested: indent the alias under its section
            section, sub = key.split(":\n  ")
            text = text.replace(f"{section}: *l8", f"{section}:\n  {sub}: *l8")
        f = tmp_path / "agent.yaml"
        f.write_text(text)
        r = check_config(f)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"aliases expand to more than {MAX_ALIAS_NODES} nodes" in r.stderr
        assert "refused YAML at line" in r.stderr
        assert len(r.stderr) < 500, len(r.stderr)

    def test_bomb_through_a_merge_key_is_refused(self, tmp_path: Path) -> None:
        """``<<: *bomb`` (a merge key expands the alias into the mapping) is counted the same."""
        text = alias_bomb("x").replace("l0: &l0 [", "l0: &l0 {a: 1, b: [").replace("lol]\n", "lol]}\n", 1)
        f = tmp_path / "agent.yaml"
        f.write_text(text.replace("x: *l8", "collectors:\n  <<: *l8"))
        r = check_config(f)
        assert r.returncode == 2 and "aliases expand to more than" in r.stderr, r.stderr

    def test_aliases_within_the_budget_still_work(self, tmp_path: Path) -> None:
        """Ordinary reuse of an anchor is not refused: the budget is for expansion, not for aliases."""
        f = tmp_path / "agent.yaml"
        f.write_text("hook:\n  allow_users: &ops [root, alice, bob]\nfilter:\n  drop_kinds: *ops\n")
        cfg = load_config(f)
        assert cfg.hook.allow_users == ["root", "alice", "bob"] == cfg.filter.drop_kinds

    @pytest.mark.parametrize("text,needle", [
        ("a: &a [1, *a]\n", "refers to a node that contains it"),
        ("log_level: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 64 levels"),
        ("log_level: " + "{a: " * 200 + "1" + "}" * 200 + "\n", "nested deeper than 64 levels"),
    ])
    def test_cycles_and_deep_nesting_are_refused(self, tmp_path: Path, text: str, needle: str) -> None:
        """A self-referencing alias and nesting past the limit get a clear refusal, not a RecursionError."""
        f = tmp_path / "agent.yaml"
        f.write_text(text)
        r = check_config(f)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr

    def test_pure_python_loader_has_the_same_budgets(self) -> None:
        """Without libyaml the same budgets hold (the fallback loader)."""
        for text in (alias_bomb(), "a: &a [*a]", "[" * 100 + "]" * 100):
            loader = PyBudgetLoader(text)
            with pytest.raises(YAMLBudgetError):
                loader.get_single_data()
            loader.dispose()

    def test_huge_config_is_not_read_whole(self, tmp_path: Path) -> None:
        """A 100 MB config is refused after reading at most the 1 MiB limit (and one byte more)."""
        f = tmp_path / "agent.yaml"
        with open(f, "wb") as out:
            out.write(b"log_level: info\n")
            out.truncate(100 * 1024 * 1024)
        before = bytes_read_by_this_process()
        with pytest.raises(ConfigError, match="larger than 1 MiB"):
            load_config(f)
        read = bytes_read_by_this_process() - before
        assert read <= MAX_CONFIG_BYTES + 64 * 1024, read

    def test_fifo_or_device_in_place_of_the_config(self, tmp_path: Path) -> None:
        """A FIFO (which would block), /dev/zero (which never ends) or a directory is refused as
        not a regular file, by check, run and doctor alike, without a traceback."""
        fifo = tmp_path / "agent.yaml"
        os.mkfifo(fifo)
        (tmp_path / "conf.d").mkdir()
        for path in (fifo, Path("/dev/zero"), tmp_path / "conf.d"):
            r = check_config(path)
            assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr
        for cmd in ("run", "doctor"):
            r = subprocess.run([sys.executable, "-m", "agent.cli", cmd, "--config", str(tmp_path / "conf.d")],
                               capture_output=True, text=True, timeout=60)
            said = r.stdout + r.stderr  # doctor reports on stdout
            assert r.returncode != 0 and "not a regular file" in said and "Traceback" not in said, said

    @pytest.mark.parametrize("text,needle", [
        ("log_level: " + "A" * 500_000 + "\n", "'AAAAAAAAAA"),
        ("server: " + "9" * 5000 + "\n", "a value cannot be read"),
        ("redact:\n  patterns: ['" + "(" * 3000 + "']\n", "nests groups too deeply"),
        ("redact:\n  patterns: ['" + "a" * 5000 + "']\n", "longer than 4096 characters"),
        ("".join(f"k{i}: {'v' * 500}\n" for i in range(2000)), "more problems"),
    ])
    def test_values_in_errors_are_clipped(self, tmp_path: Path, text: str, needle: str) -> None:
        """Long values, huge integers, regexes that blow the compiler's stack and thousands of problems: the
        error names the key and shows a clipped value, never the input whole."""
        f = tmp_path / "agent.yaml"
        f.write_text(text)
        r = check_config(f)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert all(len(line) < 400 for line in r.stderr.splitlines())
        assert len(r.stderr) < 20_000

    def test_reload_parses_off_the_event_loop(self, agent_factory, receiver, tmp_path: Path) -> None:
        """While a SIGHUP reload parses a large config (a second or more), the hook keeps answering: between
        RELOADING=1 and the READY=1 after it come many answers (parsed on the loop, at most the one request
        in flight could be answered)."""
        order: list[str] = []
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(0.2)
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                try:
                    msg = notify.recv(65536).decode()
                except TimeoutError:
                    continue
                order.extend(line for line in msg.split("\n") if line in ("RELOADING=1", "READY=1"))

        def produce() -> None:
            with HookClient(agent.socket) as c:
                while not stop.is_set():
                    assert c.emit("user_activity", EVENT)["status"] == "ok"
                    order.append("answer")

        agent = agent_factory(receiver)
        agent.env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        agent.start()
        threads = [threading.Thread(target=listen, daemon=True), threading.Thread(target=produce, daemon=True)]
        try:
            for t in threads:
                t.start()
            wait_until(lambda: "READY=1" in order and order.count("answer") > 10, 30, what="agent ready, answering")
            # ~1 MB of unknown keys: valid YAML that takes a while to parse and is refused
            agent.config_path.write_text("".join(f"k{i:06d}: 1\n" for i in range(90_000)))
            agent.signal(signal.SIGHUP)
            wait_until(lambda: "RELOADING=1" in order and "READY=1" in order[order.index("RELOADING=1"):], 120,
                       what="the reload to finish")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            notify.close()
        start = order.index("RELOADING=1")
        end = order.index("READY=1", start)
        during = order[start:end].count("answer")
        assert during >= 10, f"{during} hook answers while the reload parsed"
        assert "reload refused" in agent.log_path.read_text()

    def test_reload_with_an_alias_bomb_is_refused_and_the_agent_serves(self, agent) -> None:
        """A bomb written over the config and SIGHUP: the reload is refused naming the bomb, the agent answers."""
        agent.config_path.write_text(alias_bomb())
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in agent.log_path.read_text(), 30, what="refusal logged")
        assert "aliases expand to more than" in agent.log_path.read_text()
        with HookClient(agent.socket) as c:
            assert c.emit("user_activity", EVENT)["status"] == "ok"
        assert agent.health()["ok"] is True


def _config_with_token(tmp: Path, token: Path) -> Path:
    f = tmp / "agent.yaml"
    f.write_text(yaml.safe_dump({"state_dir": str(tmp / "state"), "hook": {"socket": str(tmp / "hook.sock")},
                                 "sink": {"url": "https://ws.example.com/api/v1/agent/events",
                                          "token_file": str(token)}}))
    return f


def _run_refused(agent_factory, token: Path) -> str:
    """Start a real agent whose token_file is ``token``; it must exit 2 at once. Returns its log."""
    agent = agent_factory(sink={"token_file": str(token)})
    agent.start(wait=False)
    assert agent.proc is not None
    rc = agent.proc.wait(60)
    agent.proc = None
    log = agent.log_path.read_text()
    assert rc == 2, log[-2000:]
    return log


class TestTokenHazards:
    @pytest.mark.parametrize("content,needle", [
        (b"s3cret\nsecond-line\n", "a line break at byte 6"),
        (b"s3cret\rX", "a line break at byte 6"),
        (b"s3c\x01ret", "control character 0x01 at byte 3"),
        (b"s3c\x7fret", "control character 0x7f at byte 3"),
        (b"two words", "a space at byte 3"),
        (b"tok\xffen", "byte 3 of the token is not ASCII (0xff)"),
        ("jeton-été".encode(), "byte 6 of the token is not ASCII (0xc3)"),
        (b"x" * (MAX_TOKEN_BYTES + 1), f"larger than {MAX_TOKEN_BYTES} bytes"),
    ])
    def test_unsendable_token_refused_by_check_config_and_at_start(self, tmp_path: Path, agent_factory,
                                                                  content: bytes, needle: str) -> None:
        """A token that cannot travel in a header is refused by check-config and by `run` (exit 2, which systemd
        does not restart), naming sink.token_file, without printing the token."""
        token = tmp_path / "token.bad"
        token.write_bytes(content)
        token.chmod(0o600)
        r = check_config(_config_with_token(tmp_path, token))
        assert r.returncode == 2, r.stdout
        assert f"sink.token_file: '{token}'" not in r.stderr  # the path is shown plain, not repr'd twice
        assert f"sink.token_file: {token}: " in r.stderr and needle in r.stderr, r.stderr
        log = _run_refused(agent_factory, token)
        assert f"sink.token_file: {token}: " in log and needle in log
        if content.isascii() and len(content) < 100:
            secret = content.split()[0].decode()
            assert secret not in r.stderr.replace(str(token), "") and secret not in log.replace(str(token), "")

    def test_token_owned_by_another_user_is_refused(self, tmp_path: Path, agent_factory) -> None:
        """A token file a real other user owns (they could read it or swap in their own) is refused."""
        need_root()
        where = Path(tempfile.mkdtemp(prefix="token-"))  # a directory the other user can enter
        where.chmod(0o755)
        token = where / "token"
        token.write_text("s3cret-token\n")
        token.chmod(0o600)
        with throwaway_user("atk") as user, contextlib.ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, where, True)
            uid = pwd.getpwnam(user).pw_uid
            os.chown(token, uid, -1)
            # the other user really can replace it
            subprocess.run(["runuser", "-u", user, "--", "sh", "-c", f"echo theirs > {token}"], check=True)
            r = check_config(_config_with_token(tmp_path, token))
            log = _run_refused(agent_factory, token)
        for out in (r.stderr, log):
            assert f"sink.token_file: {token} is owned by uid {uid}" in out and f"chown root:root {token}" in out
        assert r.returncode == 2

    def test_symlinked_token_is_refused(self, tmp_path: Path, agent_factory) -> None:
        """A symlink as token_file is refused (the link decides which file root reads and sends)."""
        real = tmp_path / "real-token"
        real.write_text("s3cret-token\n")
        real.chmod(0o600)
        link = tmp_path / "token"
        link.symlink_to(real)
        r = check_config(_config_with_token(tmp_path, link))
        assert r.returncode == 2 and f"sink.token_file: {link} is a symlink" in r.stderr, r.stderr
        assert str(real) in r.stderr  # the fix names the file to point at
        assert f"{link} is a symlink" in _run_refused(agent_factory, link)

    @pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
    def test_token_others_can_change_is_refused(self, tmp_path: Path, mode: int) -> None:
        """Group- or world-writable: others can swap the token; refused with the chmod."""
        token = tmp_path / "token"
        token.write_text("s3cret-token\n")
        token.chmod(mode)
        r = check_config(_config_with_token(tmp_path, token))
        assert r.returncode == 2 and f"mode {mode:04o}: other users can change the token" in r.stderr, r.stderr
        assert f"chmod 600 {token}" in r.stderr

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
    def test_token_others_can_read_is_a_warning(self, tmp_path: Path, agent_factory, mode: int) -> None:
        """Group- or world-readable: check-config passes with a warning naming the key and path; the agent
        starts and logs the same warning."""
        token = tmp_path / "token"
        token.write_text("s3cret-token\n")
        token.chmod(mode)
        r = check_config(_config_with_token(tmp_path, token))
        warning = f"sink.token_file: {token} has mode {mode:04o}: other users can read the token"
        assert r.returncode == 0 and warning in r.stderr and f"chmod 600 {token}" in r.stderr, r.stderr
        agent = agent_factory(sink={"token_file": str(token)})
        agent.start()
        try:
            assert warning in agent.log_path.read_text()
        finally:
            agent.stop()

    def test_private_root_token_gives_no_warning(self, tmp_path: Path) -> None:
        """The right file (root's, 0600) passes check-config without a word."""
        token = tmp_path / "token"
        token.write_text("s3cret-token\n")
        token.chmod(0o600)
        r = check_config(_config_with_token(tmp_path, token))
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr

    @pytest.mark.parametrize("name,needle", [("x" * 300, "File name too long"), ("a\x00b", "embedded null byte")])
    def test_unusable_token_path_is_a_clear_error(self, tmp_path: Path, name: str, needle: str) -> None:
        """A token_file name longer than NAME_MAX or holding a NUL (found by fuzzing: an OSError escaped the
        validator as a traceback): exit 2 naming the key."""
        f = tmp_path / "agent.yaml"
        f.write_text(yaml.safe_dump({"sink": {"token_file": str(tmp_path / name)}}))
        r = check_config(f)
        assert r.returncode == 2 and "sink.token_file:" in r.stderr and needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


# ----------------------------------------------------------------- derivers (issue 13, item 1)

MiB = 1 << 20


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _line(n: int, program: str, message: str, who: dict[str, Any], host: str = "h") -> dict[str, Any]:
    return {"id": f"jd-{n:08d}", "kind": "system_log", "ts": "2026-11-26T20:00:00.000Z",
            "data": {"program": program, "level": "info", "pid": who["pid"], "message": message, "hostname": host,
                     "extra": {"sender": who}}}


@pytest.fixture
def flood_lab(tmp_path: Path) -> Iterator[tuple[LiveJournald, Intruder, ReceiverProcess, AgentProcess]]:
    """A live journald, a throwaway user, a counting receiver and an agent reading the journal."""
    need_root()
    need(os.access(JOURNALD, os.X_OK), "systemd-journald")
    for b in ("logger", "setpriv", "useradd", "nsenter", "unshare"):
        need_binary(b)
    with LiveJournald(tmp_path / "jd", max_file_size="64M") as jd, \
            ReceiverProcess(tmp_path / "receiver", mode="count") as receiver:
        d = tmp_path / "agent"
        d.mkdir()
        agent = AgentProcess(d, agent_config(d, receiver, collectors={
            "journald": {"enabled": True, "directory": str(jd.journal_dir), "start_at": "beginning"},
            "auth": {"enabled": True}, "sftp": {"enabled": True}}))
        intruder = Intruder(jd)
        try:
            agent.start()
            yield jd, intruder, receiver, agent
        finally:
            if agent.proc is not None:
                agent.stop()
            intruder.remove()


class TestDeriverBounds:
    def test_open_file_flood_from_a_local_user_keeps_the_agent_small(self, flood_lab: Any) -> None:
        """60k 'open "/tmp/<2000 chars>-N" flags READ' sftp-server lines from a local user: every
        line is shipped, counted as forged, and the agent's peak RSS stays under 200 MiB."""
        jd, intruder, receiver, agent = flood_lab
        n, name = 60_000, "/tmp/" + "p" * 2000
        lines = [f'open "{name}-{i}" flags READ' for i in range(n)]
        for i in range(0, n, 10_000):
            intruder.logger("sftp-server", *lines[i:i + 10_000], size=8192)

        def shipped() -> int:
            return int(receiver.stats()["stored_by_kind"].get("system_log", 0))

        wait_until(lambda: shipped() >= n, 120, what=f"{n} lines at the receiver (have {shipped()})")
        forged = internal_count(agent, "forged_lines", "program=sftp-server")
        assert forged == n
        assert receiver.stats()["stored_by_kind"].get("webftp_transfer", 0) == 0
        assert agent.proc is not None
        peak = _peak_rss(agent.proc.pid)
        assert peak < 200 * MiB, f"agent peak RSS {peak / MiB:.0f} MiB"

    def test_vouched_open_file_flood_is_capped(self) -> None:
        """The same flood from a process that fits (a real sftp-server of a real session) stays
        within the session's open-file caps and the deriver's byte cap, evictions counted."""
        counted: dict[str, int] = {}
        d = SftpDeriver(counter=lambda name, k, **kw: counted.__setitem__(name, counted.get(name, 0) + k),
                        uid_of=lambda user: 0, lookup_user=lambda pid: None)
        sshd = sender("sshd", pid=100)
        assert d(_line(0, "sshd", "Accepted publickey for root from 192.0.2.1 port 1 ssh2", sshd)) == []
        who = sender("sftp-server", uid=0, pid=4242)
        tracemalloc.start()
        try:
            d(_line(1, "sftp-server", "session opened for local user root from [192.0.2.1]", who))
            name = "/tmp/" + "p" * 2000
            for i in range(60_000):
                d(_line(2 + i, "sftp-server", f'open "{name}-{i}" flags READ', who))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        s = d._sessions[("h", "sftp-server", 4242)]
        assert len(s.open_files) <= MAX_OPEN_FILES and s.open_files.bytes <= s.open_files.max_bytes
        assert counted["deriver_state_evicted"] >= 60_000 - MAX_OPEN_FILES
        assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB traced"
        # the session still works: a transfer of a file opened last is reported
        rows = d(_line(70_000, "sftp-server", f'close "{name}-59999" bytes read 5 written 0', who))
        assert [(r["data"]["size"], r["data"]["provenance"]["source"]) for r in rows] == [(5, "journal")]

    def test_many_vouched_sessions_stay_within_the_byte_cap(self) -> None:
        """Thousands of sessions each holding many long open paths: the whole table keeps to its byte cap."""
        d = SftpDeriver(uid_of=lambda user: 0, lookup_user=lambda pid: None, max_bytes=8 * MiB)
        d(_line(0, "sshd", "Accepted publickey for root from 192.0.2.1 port 1 ssh2", sender("sshd", pid=100)))
        name = "/srv/" + "q" * 3000
        k = 1
        for pid in range(1000, 1400):
            who = sender("sftp-server", uid=0, pid=pid)
            d(_line(k, "sftp-server", "session opened for local user root from [192.0.2.1]", who))
            for j in range(20):
                k += 1
                d(_line(k, "sftp-server", f'open "{name}{j}" flags READ', who))
        assert d._sessions.bytes <= 8 * MiB and d._sessions.evicted > 0
        assert MAX_STATE_BYTES >= 8 * MiB

    def test_auth_connection_tables_are_capped_in_bytes(self) -> None:
        """Accepted lines with 10 kB user names from the real sshd fill the connection table only up
        to its byte cap."""
        counted: list[int] = []
        d = AuthDeriver(max_tracked_bytes=2 * MiB, witness=Witness(), counter=lambda name, k, **kw: counted.append(k))
        for i in range(5_000):
            user = f"u{i}" + "x" * 10_000
            d(_line(i, "sshd", f"Accepted password for {user} from 192.0.2.1 port {i % 60000 + 1} ssh2",
                    sender("sshd", pid=10_000 + i)))
        assert d._conn.bytes <= 2 * MiB and len(d._conn) < 5_000 and sum(counted) == d._conn.evicted


GOOD = {"kind": "user_activity", "data": {"user": "bob", "action": "login", "result": 200}}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB, read from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            mib = int(line.split()[1]) / 1024
            print(f"peak RSS of pid {pid}: {mib:.1f} MiB")  # shown with pytest -s
            return mib
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@dataclass
class LocalUser:
    """A throwaway local account."""

    name: str
    uid: int
    gid: int
    groups: list[str]

    def run_python(self, code: str, *args: str) -> subprocess.Popen[str]:
        """Start ``python -c code args…`` as this user (its own and supplementary groups). The
        interpreter starts as root, imports what the scripts use, raises its file limit and then
        drops to the user: the test's Python may live where the user cannot read."""
        import grp

        gids = [grp.getgrnam(g).gr_gid for g in self.groups]
        prelude = (
            "import json, os, resource, select, socket, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n"
            f"os.setgroups({gids!r}); os.setgid({self.gid}); os.setuid({self.uid})\n"
        )
        return subprocess.Popen(
            [sys.executable, "-c", prelude + code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd="/",
        )


@pytest.fixture
def local_users() -> Iterator[object]:
    """Make throwaway users and groups: ``make_user(groups=[…]) -> LocalUser``, ``make_group() -> name``;
    all removed after the test."""
    need_root()
    for b in ("useradd", "userdel", "groupadd", "groupdel"):
        need_binary(b)
    users: list[str] = []
    groups: list[str] = []

    class Make:
        @staticmethod
        def group() -> str:
            name = f"ahg{uuid.uuid4().hex[:8]}"
            subprocess.run(["groupadd", name], check=True, capture_output=True)
            groups.append(name)
            return name

        @staticmethod
        def user(groups: list[str] | None = None) -> LocalUser:
            import pwd

            name = f"ahu{uuid.uuid4().hex[:8]}"
            cmd = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin"]
            if groups:
                cmd += ["-G", ",".join(groups)]
            subprocess.run([*cmd, name], check=True, capture_output=True)
            users.append(name)
            pw = pwd.getpwnam(name)
            return LocalUser(name, pw.pw_uid, pw.pw_gid, list(groups or []))

    try:
        yield Make
    finally:
        for u in users:
            subprocess.run(["userdel", "-f", u], capture_output=True)
        for g in groups:
            subprocess.run(["groupdel", g], capture_output=True)


@pytest.fixture
def open_sockdir() -> Iterator[str]:
    """A directory any user may traverse, for a hook socket other users connect to."""
    d = tempfile.mkdtemp(prefix="alpacon-hostile-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


#: run as a local user: open N connections and hold them without sending a byte. On "count" it
#: reports how many were answered busy; on "go" it waits for the agent to close the others
HOLDER = r"""
path, n, wait_close = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
print(json.dumps({"opened": len(held)}), flush=True)
sys.stdin.readline()
busy = 0
r, _, _ = select.select(held, [], [], 0.5)
for s in r:
    if b'"busy"' in s.recv(4096):
        busy += 1
    held.remove(s)
    s.close()
print(json.dumps({"held": len(held), "busy": busy}), flush=True)
sys.stdin.readline()
t0 = time.monotonic()
closed = 0
while held and time.monotonic() - t0 < wait_close:
    r, _, _ = select.select(held, [], [], 0.5)
    for s in r:
        if s.recv(4096) == b"":
            closed += 1
        held.remove(s)
        s.close()
print(json.dumps({"closed_by_agent": closed, "still_open": len(held)}), flush=True)
"""


class Holder:
    """The HOLDER script running as a local user against an agent's hook socket."""

    def __init__(self, user: LocalUser, agent: AgentProcess, n: int, wait_close: float) -> None:
        self.proc = user.run_python(HOLDER, agent.socket, str(n), str(wait_close))
        self.opened = self._line()["opened"]

    def _line(self) -> dict[str, int]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"holder ended early: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return json.loads(line)

    def step(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _conns(agent: AgentProcess, outcome: str) -> float:
    return agent.metric("alpacon_agent_hook_connections_total", outcome=outcome)


class TestHookSlots:
    """Issue 13 item 6: idle connections time out, slots are per uid, the peer check comes first."""

    def test_a_uid_holding_a_thousand_idle_connections_starves_nobody(self, agent_factory, receiver, local_users,
                                                                       open_sockdir):
        """1,000 idle connections from one allowed uid: it gets its per-uid share, the rest are
        answered busy, root's emit still works, the idle ones are closed after the timeout, and the
        agent's peak RSS stays under 200 MiB."""
        user = local_users.user()
        agent: AgentProcess = agent_factory(receiver, hook={
            "socket": f"{open_sockdir}/hook.sock", "mode": 0o666, "allow_users": ["root", user.name],
            "max_connections": 256, "max_connections_per_uid": 64, "idle_timeout_s": 3.0})
        agent.start()
        holder = Holder(user, agent, 1000, 30)
        try:
            assert holder.opened == 1000
            wait_until(lambda: _conns(agent, "served") + _conns(agent, "busy") >= 1000, timeout=60,
                       what="every connection served or answered busy")
            first = holder.step()
            r = agent.cli("emit", "user_activity", "--json", json.dumps(GOOD["data"]))
            assert r.returncode == 0, r.stdout + r.stderr
            with HookClient(agent.socket) as c:
                assert c.emit(**GOOD)["status"] == "ok"
            second = holder.step()
        finally:
            holder.close()
        assert first == {"held": 64, "busy": 1000 - 64}
        assert second == {"closed_by_agent": 64, "still_open": 0}
        assert _conns(agent, "idle_closed") == 64
        assert _conns(agent, "busy") == 1000 - 64
        assert agent.proc is not None
        assert peak_rss_mib(agent.proc.pid) < 200
        assert "Traceback" not in agent.log_path.read_text()

    def test_refused_peers_hold_no_slot(self, agent_factory, receiver, local_users, open_sockdir):
        """200 silent connections of a uid that is not allowed: root still gets every one of the 8
        slots meanwhile, and the refused peers are answered denied, not busy."""
        outsider = local_users.user()
        agent: AgentProcess = agent_factory(receiver, hook={
            "socket": f"{open_sockdir}/hook.sock", "mode": 0o666, "max_connections": 8})
        agent.start()
        holder = Holder(outsider, agent, 200, 10)
        try:
            wait_until(lambda: _conns(agent, "denied") >= 200, timeout=30, what="all 200 outsider connections denied")
            clients = [HookClient(agent.socket, timeout=10).connect() for _ in range(8)]
            try:
                answers = [c.emit(**GOOD) for c in clients]
            finally:
                for c in clients:
                    c.close()
        finally:
            holder.close()
        assert [a["status"] for a in answers] == ["ok"] * 8
        assert _conns(agent, "busy") == 0

    def test_a_uid_that_took_every_slot_gives_one_up(self, agent_factory, receiver, local_users, open_sockdir):
        """One uid holds all 16 slots (its own cap is 16 too): root's connection is still served, and
        one of the hog's idle connections is closed for it."""
        hog = local_users.user()
        agent: AgentProcess = agent_factory(receiver, hook={
            "socket": f"{open_sockdir}/hook.sock", "mode": 0o666, "allow_users": ["root", hog.name],
            "max_connections": 16, "max_connections_per_uid": 16, "idle_timeout_s": 60})
        agent.start()
        holder = Holder(hog, agent, 16, 3)
        try:
            wait_until(lambda: _conns(agent, "served") >= 16, timeout=30, what="the hog's 16 connections served")
            assert holder.step() == {"held": 16, "busy": 0}
            with HookClient(agent.socket, timeout=10) as c:
                assert c.emit(**GOOD)["status"] == "ok"
            second = holder.step()
        finally:
            holder.close()
        assert second["closed_by_agent"] == 1
        assert _conns(agent, "evicted") == 1


    def test_a_client_reconnects_after_an_idle_close(self, agent_factory, receiver):
        """The agent closes a connection idle past hook.idle_timeout_s; the same HookClient's next
        request opens a new one instead of failing."""
        agent: AgentProcess = agent_factory(receiver, hook={"idle_timeout_s": 0.5})
        agent.start()
        with HookClient(agent.socket, timeout=10) as c:
            assert c.emit(**GOOD)["status"] == "ok"
            wait_until(lambda: _conns(agent, "idle_closed") == 1, timeout=10, what="the idle close")
            assert c.emit(**GOOD)["status"] == "ok"


EMITTER = r"""
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": exc.errno}))
    sys.exit(0)
s.sendall(json.dumps({"kind": "user_activity", "data": {"user": "x", "action": "login", "result": 200}}).encode()
          + b"\n")
print(s.makefile().readline().strip())
"""


class TestHookGroups:
    """Issue 13 item 7: every group in hook.allow_groups can connect, not only the first."""

    def test_two_allowed_groups_both_admitted(self, agent_factory, receiver, local_users, open_sockdir):
        """Users of either of two allowed groups emit ok through a 0660 socket; a user of neither
        cannot even connect."""
        g1, g2 = local_users.group(), local_users.group()
        u1, u2, u3 = local_users.user([g1]), local_users.user([g2]), local_users.user()
        agent: AgentProcess = agent_factory(receiver, hook={
            "socket": f"{open_sockdir}/hook.sock", "mode": 0o660, "allow_groups": [g1, g2],
            "push": {"user_activity": {"groups": [g1, g2]}}})  # who may push, apart from who may connect
        agent.start()
        results = {}
        for u in (u1, u2, u3):
            p = u.run_python(EMITTER, agent.socket)
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            results[u.name] = json.loads(out)
        assert results[u1.name]["status"] == "ok"
        assert results[u2.name]["status"] == "ok"
        assert results[u3.name] == {"connect_error": 13}  # EACCES: the file's permissions stop it
        assert oct(os.stat(agent.socket).st_mode & 0o777) == oct(0o660)


def _nested(depth: int) -> dict[str, object]:
    """A user_activity emit whose ``details`` nest objects ``depth`` levels below the message."""
    inner: object = "leaf"
    for _ in range(depth - 2):  # message > data > details > …: the message is level 1
        inner = {"k": inner}
    return {"kind": "user_activity", "data": {"user": "bob", "action": "login", "result": 200, "details": inner}}


class TestHookMessages:
    """Issue 13 item 8: deep nesting is refused at parse time; every failure is answered and logged."""

    @pytest.mark.parametrize("depth", [33, 300, 5000, 100_000])
    def test_deep_nesting_answered_invalid_and_the_connection_lives(self, agent, depth):
        """A message nested ``depth`` levels is answered invalid with the cap; the next message on the
        same connection is stored; the log has one line for it and no traceback."""
        deep = json.dumps(_nested(depth)).encode() if depth < 1000 else (
            b'{"kind":"user_activity","data":{"details":' + b"[" * depth + b"]" * depth + b"}}")
        with HookClient(agent.socket, timeout=20) as c:
            c._sock.sendall(deep + b"\n")  # type: ignore[union-attr]
            answer = c._readline()
            after = c.emit(**GOOD)
        assert answer["status"] == "invalid" and "nested deeper than 32 levels" in answer["reason"]
        assert after["status"] == "ok"
        log = agent.log_path.read_text()
        assert "Traceback" not in log and "RecursionError" not in log
        refused = [line for line in log.splitlines() if "hook message refused" in line]
        assert len(refused) == 1 and "nested deeper" in refused[0]

    def test_just_under_the_cap_is_stored(self, agent, receiver):
        """32 levels (the cap) is accepted and reaches the receiver whole."""
        with HookClient(agent.socket) as c:
            a = c.emit(**_nested(32))
        assert a["status"] == "ok"
        wait_until(lambda: a["id"] in receiver.ids("user_activity"), what="the event stored")

    def test_refusals_log_one_line_each_and_are_rate_limited(self, agent):
        """5,000 garbage lines: 5,000 invalid answers, at most a burst of log lines, the connection kept."""
        with HookClient(agent.socket, timeout=30) as c:
            answers = c.request_many([{"kind": "nonsense", "data": {}, "ref": i} for i in range(5000)])
            assert c.emit(**GOOD)["status"] == "ok"
        assert [a["status"] for a in answers] == ["invalid"] * 5000
        assert [a["ref"] for a in answers] == list(range(5000))
        lines = [ln for ln in agent.log_path.read_text().splitlines() if "hook message refused" in ln]
        assert 1 <= len(lines) < 200
        with contextlib.suppress(ValueError):
            assert all("\n" not in json.loads(ln)["reason"] for ln in lines)


class SpoolWatcher:
    """Polls a running agent's spool (read-only, beside the agent's own connection) for the largest
    batch it holds: JSON bytes and events."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path = path
        self.max_bytes = self.max_events = self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import sqlite3

        while not self._stop.wait(0.05):
            if not self.path.exists():
                continue
            try:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
                try:
                    rows = db.execute("SELECT seq, CASE WHEN raw_bytes > 0 THEN raw_bytes ELSE bytes END, n_events"
                                      " FROM batches").fetchall()
                finally:
                    db.close()
            except sqlite3.Error:
                continue
            for _, size, n in rows:
                self.max_bytes = max(self.max_bytes, size)
                self.max_events = max(self.max_events, n)
            self.seen = max(self.seen, max((r[0] for r in rows), default=0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class TestHookBatchLimits:
    """Issue 13 item 2: the push lane keeps batch.max_bytes and batch.max_events, and a 413 split
    holds no more than a batch's worth."""

    def test_32_producers_of_large_events_and_a_backend_that_answers_413(self, agent_factory, receiver):
        """32 producers pipelining 100 KB events (and a flood of small ones) against a receiver that
        refuses bodies over 300 KB: every spooled batch keeps 1 MiB / 200 events, every event is
        stored after the splits, and the agent's peak RSS stays under 200 MiB."""
        import threading

        receiver.faults(max_body_bytes=300_000)
        agent: AgentProcess = agent_factory(receiver, batch={"max_events": 200, "max_bytes": 1 << 20,
                                                             "max_wait_ms": 50})
        agent.start()
        assert agent.proc is not None
        watcher = SpoolWatcher(agent.spool_path)
        acked: list[str] = []
        bad: list[object] = []

        def produce(k: int) -> None:
            big = [{"kind": "system_log", "id": f"big-{k:02d}-{i:03d}",
                    "data": {"program": "p", "level": "info", "message": os.urandom(50_000).hex()}} for i in range(12)]
            small = [{"kind": "system_log", "id": f"small-{k:02d}-{i:04d}",
                      "data": {"program": "p", "level": "info", "message": f"line {i}"}} for i in range(400)]
            try:
                with HookClient(agent.socket, timeout=120) as c:
                    for a in c.request_many(big + small, window=256):
                        (acked.append(a["id"]) if a["status"] == "ok" else bad.append(a))
            except Exception as exc:  # noqa: BLE001 - reported below
                bad.append(exc)

        producers = [threading.Thread(target=produce, args=(k,)) for k in range(32)]
        try:
            for t in producers:
                t.start()
            for t in producers:
                t.join()
            assert bad == [] and len(acked) == 32 * 412
            agent.wait_drained(timeout=120)
        finally:
            watcher.stop()
        assert watcher.seen >= 30, "too few batches seen to judge the limits"
        assert watcher.max_bytes <= 1 << 20 and watcher.max_events <= 200, vars(watcher)
        stored = set(receiver.ids("system_log"))
        assert stored == set(acked)
        assert receiver.stats()["requests_by_status"].get("413", 0) > 0  # the splits were exercised
        assert peak_rss_mib(agent.proc.pid) < 200


class LimitedAgent(AgentProcess):
    """The agent under an address-space limit (``prlimit --as``), as under a memory cgroup or ulimit."""

    limit_bytes = 0

    def start(self, wait: bool = True, extra_args: tuple[str, ...] = ()) -> AgentProcess:
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, "MALLOC_ARENA_MAX": "2"}
        self.proc = subprocess.Popen(
            [need_binary("prlimit"), f"--as={self.limit_bytes}", "--", str(BIN), "run", "--config",
             str(self.config_path), *extra_args], stdout=log, stderr=log, env=env, start_new_session=True)
        if wait:
            self.wait_ready()
        return self


class TestShipperMemoryError:
    """Issue 13 item 2: a batch whose split runs out of memory does not block the ones behind it."""

    def test_a_batch_that_cannot_be_split_in_memory_is_dead_lettered_and_the_rest_ship(self, receiver, tmp_path):
        """A 60 MB batch spooled by an older agent, a backend refusing bodies over 1 MB and an agent
        whose address space ends 200 MiB past its idle size: the split's MemoryError is logged, the
        batch goes to the dead letters after a few attempts, and the three batches behind it ship."""
        import sqlite3

        import orjson

        from agent.spool import NewBatch, Spool
        from tests.harness import agent_config

        (tmp_path / "probe").mkdir()
        probe = AgentProcess(tmp_path / "probe", agent_config(tmp_path / "probe", receiver))
        probe.start()
        assert probe.proc is not None
        vm = next(int(ln.split()[1]) for ln in Path(f"/proc/{probe.proc.pid}/status").read_text().splitlines()
                  if ln.startswith("VmPeak:")) * 1024
        probe.stop()
        (tmp_path / "agent").mkdir()
        cfg = agent_config(tmp_path / "agent", receiver)
        state = Path(cfg["state_dir"])
        spool = Spool(state, 1 << 30)
        big = orjson.dumps([{"id": f"legacy-{i:07d}", "kind": "system_log", "ts": "2026-12-01T00:00:00.000Z",
                             "server": "s", "data": {"program": "p", "level": "info", "message": f"m {i}"}}
                            for i in range(400_000)])
        assert len(big) > 50_000_000
        spool.append([NewBatch("legacy-huge", 0, 400_000, {"system_log": 400_000}, big).packed(1)])
        for k in range(3):
            body = orjson.dumps([{"id": f"behind-{k}-{i:03d}", "kind": "system_log", "ts": "2026-12-01T00:00:00.000Z",
                                  "server": "s", "data": {"program": "p", "level": "info", "message": "x"}}
                                 for i in range(10)])
            spool.append([NewBatch(f"behind-{k}", 0, 10, {"system_log": 10}, body).packed(1)])
        spool.close()
        del big
        receiver.faults(max_body_bytes=1_000_000)
        agent = LimitedAgent(tmp_path / "agent", cfg)
        agent.limit_bytes = vm + (200 << 20)
        agent.start()
        try:
            wait_until(lambda: len([i for i in receiver.ids("system_log") if i.startswith("behind-")]) == 30,
                       timeout=120, what="the batches behind the huge one shipped")
        finally:
            agent.stop()
        db = sqlite3.connect(state / "spool.db")
        dead = db.execute("SELECT batch_id, reason FROM dead_letters").fetchall()
        db.close()
        assert [d[0] for d in dead] == ["legacy-huge"] and "MemoryError" in dead[0][1], dead
        log = agent.log_path.read_text()
        assert "out of memory shipping a batch" in log and "a batch cannot be shipped; moved to dead letters" in log


# -- the spool -------------------------------------------------------------------------------------


def _spool_with_batches(state: Path, n: int = 60) -> dict[str, bytes]:
    """A closed spool holding ``n`` deflated batches of incompressible events and two checkpoints;
    the JSON of each batch's events by batch id."""
    import orjson

    from agent.spool import NewBatch, Spool
    from agent.typing import Checkpoint

    spool = Spool(state, 1 << 30)
    spool.set_meta("agent_id", "agent-before-the-damage")
    bodies = {}
    for i in range(n):
        events = [{"id": f"salvage-{i:03d}-{j:03d}", "kind": "user_activity", "ts": "2026-12-01T00:00:00.000Z",
                   "server": "s", "data": {"user": "u", "action": "login", "result": 200,
                                           "details": {"noise": os.urandom(600).hex()}}} for j in range(20)]
        body = orjson.dumps(events)
        bodies[f"batch-{i:03d}"] = body
        spool.append([NewBatch(f"batch-{i:03d}", 1, 20, {"user_activity": 20}, body).packed(1)],
                     [Checkpoint("journald", f"cursor-{i}"), Checkpoint("syslog", f"offset-{i}")])
    spool.close()
    return bodies


def _spooled(state: Path) -> dict[str, bytes]:
    """The JSON of every batch in the spool at ``state`` by batch id (read with sqlite3 itself)."""
    import sqlite3

    from agent.wire import unpack

    db = sqlite3.connect(state / "spool.db")
    try:
        rows = db.execute("SELECT batch_id, codec, body FROM batches").fetchall()
        return {bid: unpack(codec, body) for bid, codec, body in rows}
    finally:
        db.close()


class PowerCutDisk:
    """An ext4 file system on a loop device whose image can be copied as it is at any moment: the
    copy holds only what the kernel has written to the device, as after a power cut. The journal
    commits every 300 s (not the default 5), so nothing reaches the device unless it is synced."""

    def __init__(self, root: Path, size_mb: int = 64) -> None:
        self.root = root
        self.image = root / "disk.img"
        self.mnt = root / "mnt"
        self.mounts: list[Path] = []
        self.mnt.mkdir(parents=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        self._mount(self.image, self.mnt, "loop,commit=300")

    def _mount(self, image: Path, at: Path, opts: str) -> None:
        subprocess.run(["mount", "-o", opts, str(image), str(at)], check=True, capture_output=True)
        self.mounts.append(at)

    def power_cut(self) -> Path:
        """The disk as a power cut now would leave it, mounted (its journal replayed) read-write at a
        new place: the path of that file system."""
        n = len(self.mounts)
        copy, at = self.root / f"cut{n}.img", self.root / f"cut{n}"
        shutil.copyfile(self.image, copy)
        at.mkdir()
        self._mount(copy, at, "loop")
        return at

    def close(self) -> None:
        for at in reversed(self.mounts):
            r = subprocess.run(["umount", str(at)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(at)], capture_output=True)
        self.mounts.clear()


@pytest.fixture
def power_cut_disk(tmp_path: Path) -> Iterator[PowerCutDisk]:
    need_root()
    need_binary("mkfs.ext4")
    need_binary("mount")
    disk = PowerCutDisk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.close()


class TestSpoolDurability:
    """Issue 13 item 5: with spool.synchronous full, what durable() covered survives power loss."""

    def _write(self, state: Path, synchronous: str, n: int = 20) -> object:
        from agent.spool import NewBatch, Spool

        spool = Spool(state, 1 << 30, synchronous)
        for i in range(n):
            spool.append([NewBatch(f"batch-{i:03d}", 1, 1, {"user_activity": 1}, b'[{"n":%d}]' % i)])
            spool.durable().result(timeout=30)
        return spool

    def test_full_commits_survive_a_power_cut(self, power_cut_disk):
        """Twenty commits, each waited for with durable(): a power cut right after keeps all of them."""
        spool = self._write(power_cut_disk.mnt / "state", "full")
        after = power_cut_disk.power_cut()
        spool.close()
        assert sorted(_spooled(after / "state")) == [f"batch-{i:03d}" for i in range(20)]

    def test_normal_commits_do_not_promise_it(self, power_cut_disk):
        """The control: the same with synchronous normal loses them to the same cut (so the cut is real
        and the fsync is what keeps them)."""
        import sqlite3

        spool = self._write(power_cut_disk.mnt / "state", "normal")
        after = power_cut_disk.power_cut()
        spool.close()
        try:
            kept = len(_spooled(after / "state"))
        except sqlite3.DatabaseError:  # not even the tables reached the disk
            kept = 0
        assert kept < 20

    def test_every_ok_survives_a_power_cut(self, agent_factory, power_cut_disk):
        """The agent's spool on the loop disk, synchronous full: 500 pipelined emits from 4 producers,
        all answered ok, then the power is cut: every acknowledged event is in the spool found on
        the disk afterwards."""
        import threading

        agent: AgentProcess = agent_factory(None, state_dir=str(power_cut_disk.mnt / "state"),
                                            spool={"synchronous": "full"}, batch={"max_wait_ms": 20})
        agent.start()
        acked: list[str] = []
        errors: list[object] = []

        def produce(k: int) -> None:
            try:
                with HookClient(agent.socket, timeout=60) as c:
                    answers = c.request_many([{**GOOD, "id": f"powercut-{k}-{i:04d}"} for i in range(125)], window=64)
                acked.extend(a["id"] for a in answers if a["status"] == "ok")
                errors.extend(a for a in answers if a["status"] != "ok")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        after = power_cut_disk.power_cut()
        agent.kill()
        assert errors == [] and len(acked) == 500
        found = {e["id"] for body in _spooled(after / "state").values() for e in json.loads(body)}
        assert set(acked) <= found, f"{len(set(acked) - found)} acknowledged events lost to the power cut"

    def test_commits_made_during_an_fsync_share_the_next_one(self, tmp_path):
        """200 commits made while an fsync is under way (held so here) are all covered by the one
        fsync after it, and none is answered before an fsync that started after it."""
        from concurrent.futures import wait

        from agent.spool import NewBatch, Spool

        spool = Spool(tmp_path, 1 << 30, "full")
        sync = spool._sync
        assert sync is not None
        before = sync.flushes
        futures = []
        with sync._io:  # the disk is busy with an fsync
            for i in range(200):
                spool.append([NewBatch(f"b-{i}", 1, 1, {"user_activity": 1}, b"[{}]")])
                futures.append(spool.durable())
            assert not any(f.done() for f in futures)
        wait(futures, timeout=60)
        assert all(f.done() and f.exception() is None for f in futures)
        assert sync.requests == 200 and sync.flushes - before <= 2
        spool.close()


class TestSpoolCorruption:
    """Issue 13 item 4: a corrupt spool is moved aside, salvaged and replaced, loudly, at start."""

    def _reopen(self, state: Path) -> object:
        from agent.spool import Spool

        return Spool(state, 1 << 30)

    def _moved(self, state: Path) -> list[Path]:
        return sorted(p for p in state.iterdir() if p.name.startswith("spool.db.corrupt-") and "-wal" not in p.name
                      and "-shm" not in p.name)

    def test_a_sound_spool_is_left_alone(self, tmp_path):
        """A spool that passes quick_check is opened as it is: no recovery, nothing moved."""
        bodies = _spool_with_batches(tmp_path)
        spool = self._reopen(tmp_path)
        assert spool.recovery is None
        assert self._moved(tmp_path) == []
        assert spool.checkpoints() == {"journald": "cursor-59", "syslog": "offset-59"}
        spool.close()
        assert _spooled(tmp_path) == bodies

    def test_a_truncated_spool_is_salvaged(self, tmp_path):
        """Cut to half its size: the file is kept under a timestamped name, every batch still whole on
        the first half comes back intact, the lost ones are counted, and the checkpoints (which could
        point past lost events) are dropped so sources go back to their oldest data."""
        bodies = _spool_with_batches(tmp_path)
        path = tmp_path / "spool.db"
        size = path.stat().st_size
        os.truncate(path, size // 2)
        spool = self._reopen(tmp_path)
        rec = spool.recovery
        assert rec is not None
        moved = self._moved(tmp_path)
        assert len(moved) == 1 and moved[0].stat().st_size == size // 2
        assert rec["moved_to"] == str(moved[0])
        assert 0 < rec["batches"] < 60
        assert spool.checkpoints() == {}
        assert rec["resume_from_oldest"] is True and spool.meta("resume_from_oldest") == "1"
        assert spool.meta("recoveries") == "1"
        assert json.loads(spool.meta("last_recovery"))["batches"] == rec["batches"]
        spool.close()
        salvaged = _spooled(tmp_path)
        assert len(salvaged) == rec["batches"]
        assert all(bodies[bid] == body for bid, body in salvaged.items())

    def test_an_overwritten_page_costs_only_its_rows(self, tmp_path):
        """One 16 KiB page in the middle overwritten with garbage: the batches on other pages survive
        intact, the agent id survives, and a fresh spool takes new writes."""
        from agent.spool import NewBatch

        bodies = _spool_with_batches(tmp_path)
        path = tmp_path / "spool.db"
        pages = path.stat().st_size // 16384
        with open(path, "r+b") as f:
            f.seek(16384 * (pages // 2))
            f.write(os.urandom(16384))
        spool = self._reopen(tmp_path)
        rec = spool.recovery
        assert rec is not None and rec["problem"]
        assert rec["batches"] >= 50, rec  # a page holds at most a batch or two of these
        assert spool.meta("agent_id") == "agent-before-the-damage"
        spool.append([NewBatch("after", 1, 1, {"user_activity": 1}, b"[{}]")])
        spool.close()
        salvaged = _spooled(tmp_path)
        assert "after" in salvaged
        del salvaged["after"]
        assert all(bodies[bid] == body for bid, body in salvaged.items())
        assert len(salvaged) == rec["batches"]

    def test_garbage_is_replaced_by_a_fresh_spool(self, tmp_path):
        """A file that is not a database at all: moved aside, nothing salvaged, the sources sent back
        to their oldest data; opening again later finds the fresh spool sound."""
        (tmp_path / "spool.db").write_bytes(os.urandom(100_000))
        spool = self._reopen(tmp_path)
        assert spool.recovery is not None and spool.recovery["batches"] == 0
        assert spool.recovery["resume_from_oldest"] is True
        spool.close()
        again = self._reopen(tmp_path)
        assert again.recovery is None and again.meta("recoveries") == "1"
        again.close()
        assert len(self._moved(tmp_path)) == 1

    def test_the_spool_command_reports_damage_and_moves_nothing(self, agent_factory):
        """``alpacon-agent spool`` on a damaged spool says so and leaves the file where it is: only the
        agent's own start moves a spool aside (never from under a running agent)."""
        agent: AgentProcess = agent_factory(None)
        state = Path(agent.config["state_dir"])
        state.mkdir(parents=True)
        garbage = os.urandom(50_000)
        (state / "spool.db").write_bytes(garbage)
        r = agent.cli("spool")
        assert r.returncode == 1 and "is damaged" in r.stderr and "Traceback" not in r.stderr
        assert (state / "spool.db").read_bytes() == garbage and self._moved(state) == []

    def test_the_agent_starts_on_a_corrupt_spool_and_ships_what_was_salvaged(self, agent_factory, receiver):
        """The real agent on a truncated spool: it starts (hook up) instead of crash-looping, logs the
        recovery loudly, ships the salvaged events and takes new ones."""
        agent: AgentProcess = agent_factory(receiver)
        state = Path(agent.config["state_dir"])
        bodies = _spool_with_batches(state)
        path = state / "spool.db"
        os.truncate(path, path.stat().st_size // 2)
        agent.start()
        with HookClient(agent.socket) as c:
            assert c.emit(**GOOD)["status"] == "ok"
        agent.wait_drained()
        log = agent.log_path.read_text()
        lines = [json.loads(ln) for ln in log.splitlines() if "the spool was corrupt" in ln]
        assert len(lines) == 1 and lines[0]["level"] == "error"
        n = lines[0]["batches_salvaged"]
        assert n > 0
        stored = set(receiver.ids("user_activity"))
        expected = {e["id"] for bid, body in bodies.items() for e in json.loads(body)}
        assert len(stored & expected) == n * 20
        assert "Traceback" not in log
        assert agent.metric("alpacon_agent_spool_recoveries_total") == 1
        report = json.loads(agent.cli("doctor", "--json").stdout)
        recovered = [r for r in report if r["name"] == "spool-recovered"]
        assert len(recovered) == 1 and recovered[0]["status"] == "WARN"
        assert "spool.db.corrupt-" in recovered[0]["detail"] and f"{n} batches" in recovered[0]["detail"]
        assert [r["status"] for r in report if r["name"] == "spool"] == ["OK"]  # the fresh spool is sound


class TestSupervision:
    """Issue 13 item 3: a long-lived task that ends unexpectedly is logged, counted and restarted
    with backoff, or the agent is told to exit when a restart cannot help."""

    def _supervisor(self, fatal: list[str], **kw: object) -> object:
        from agent.metrics import AgentMetrics
        from agent.supervise import Supervisor

        return Supervisor(AgentMetrics(), fatal.append, backoff_initial_s=0.01, backoff_max_s=0.05, **kw)

    def test_a_task_that_ends_is_restarted_and_counted(self):
        """A loop that returns is an unexpected end: restarted (with backoff), counted, reported."""
        import asyncio

        fatal: list[str] = []
        sup = self._supervisor(fatal, max_failures=100)
        runs: list[int] = []
        seen: dict[str, str] = {}

        async def main() -> None:
            async def loop() -> None:
                runs.append(1)
                if len(runs) < 4:
                    return  # ends although it should run for ever
                seen.update(sup.problems())
                await asyncio.Event().wait()

            sup.start("shipper", loop)
            for _ in range(500):
                if len(runs) >= 4:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)
            await sup.stop()

        asyncio.run(main())
        assert len(runs) == 4 and fatal == []
        assert sup.metrics.value("alpacon_agent_task_restarts_total", {"task": "shipper"}) == 3
        assert "ended although it should run" in seen["shipper"]

    def test_a_crash_loop_makes_the_agent_exit(self):
        """Failing max_failures times within the window calls on_fatal with the reason and stops trying."""
        import asyncio

        fatal: list[str] = []
        sup = self._supervisor(fatal, max_failures=3)
        runs: list[int] = []

        async def main() -> None:
            async def broken() -> None:
                runs.append(1)
                raise OSError("disk I/O error")

            task = sup.start("shipper", broken)
            await asyncio.wait_for(task, 10)

        asyncio.run(main())
        assert len(runs) == 3
        assert fatal == ["shipper: OSError: disk I/O error"]

    def test_a_fatal_error_exits_at_once(self):
        """An error a restart cannot mend (a corrupt spool) calls on_fatal on its first occurrence."""
        import asyncio
        import sqlite3

        fatal: list[str] = []
        sup = self._supervisor(fatal, is_fatal=lambda e: isinstance(e, sqlite3.DatabaseError))

        async def main() -> None:
            async def corrupt() -> None:
                raise sqlite3.DatabaseError("database disk image is malformed")

            await asyncio.wait_for(sup.start("shipper", corrupt), 10)

        asyncio.run(main())
        assert fatal == ["shipper: DatabaseError: database disk image is malformed"]


    def test_a_failing_task_makes_health_and_status_say_why(self):
        """While a supervised task is failing, /healthz is not ok and STATUS= leads with the reason;
        a shipper that has not moved past its longest wait is stuck too."""
        from agent.health import health_report, status_line, stuck_reason
        from agent.spool import SpoolStats

        class Shipping:
            paused_reason = None
            last_error = "connection refused"
            last_success = None

        st = SpoolStats(3, 100, 30, 5.0, 0, 0, 1 << 20)
        assert stuck_reason({}, 0.0) is None
        assert health_report(st, Shipping(), agent_id="a", server="s", collectors=[], stuck=None)["ok"] is True
        why = stuck_reason({"shipper": "DatabaseError: database disk image is malformed"}, 0.0)
        assert why == "shipper failed: DatabaseError: database disk image is malformed"
        report = health_report(st, Shipping(), agent_id="a", server="s", collectors=[], stuck=why)
        assert report["ok"] is False and report["stuck"] == why
        assert status_line(0.0, 100, Shipping(), why).startswith("STUCK: shipper failed: DatabaseError")
        assert "has not moved for 12 s" in (stuck_reason({}, 12.0) or "")


class TestSpoolRowDamage:
    """Issue 13 items 3 and 4: damage inside a page that keeps its structure (quick_check passes)."""

    def _damage_codec(self, state: Path, seq: int) -> None:
        """Overwrite one batch's codec text with bytes that are not UTF-8, in place in the file."""
        import sqlite3

        db = sqlite3.connect(state / "spool.db")
        db.execute("UPDATE batches SET codec = CAST(X'64ff666c617465' AS TEXT) WHERE seq=?", (seq,))
        db.commit()
        db.close()

    def test_an_unreadable_row_at_run_time_is_set_aside_not_raised(self, tmp_path):
        """pending() with one undecodable row: the others come back, the bad one moves to the dead
        letters under unreadable-<seq>, and the byte count follows."""
        from agent.spool import Spool

        _spool_with_batches(tmp_path, 10)
        spool = Spool(tmp_path, 1 << 30)
        before = spool.bytes
        self._damage_codec(tmp_path, 4)
        batches = spool.pending(100)
        assert [b.seq for b in batches] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
        dead = spool.dead_letters()
        assert [d["batch_id"] for d in dead] == ["unreadable-4"] and "unreadable spool row" in dead[0]["reason"]
        assert spool.bytes < before
        spool.close()

    def test_an_unreadable_row_at_start_is_a_corrupt_spool(self, tmp_path):
        """The start-up check reads every row's text, not only the pages: the damaged spool is moved
        aside and the nine good batches are salvaged."""
        from agent.spool import Spool

        _spool_with_batches(tmp_path, 10)
        self._damage_codec(tmp_path, 4)
        spool = Spool(tmp_path, 1 << 30)
        assert spool.recovery is not None and "cannot be read" in spool.recovery["problem"]
        assert spool.recovery["batches"] == 9 and spool.recovery["batches_lost"] == 1
        assert spool.checkpoints() == {}
        spool.close()


class NotifySocket:
    """A systemd notify socket of the test's own: every sd_notify message the agent sends."""

    def __init__(self, path: Path) -> None:
        import socket
        import threading

        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except OSError:
                continue
            self.messages.extend((time.monotonic(), line) for line in data.decode(errors="replace").splitlines())

    def lines(self, prefix: str) -> list[str]:
        return [m for _, m in self.messages if m.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def _leaf_page(spool: Path, table: str = "batches") -> int:
    """A leaf page of ``table`` from the middle of its b-tree (read with SQLite's dbstat)."""
    import sqlite3

    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name=? AND pagetype='leaf' ORDER BY pageno",
                                          (table,))]
    finally:
        db.close()
    assert len(pages) >= 3, pages
    return pages[len(pages) // 2]


def _checkpoint(spool: Path) -> None:
    """Move every commit from the WAL into the database file (the agent keeps running)."""
    import sqlite3
    import time

    db = sqlite3.connect(spool, timeout=10)
    try:
        for _ in range(100):
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.05)
    finally:
        db.close()
    raise AssertionError("could not checkpoint the spool")


class TestShippingSupervised:
    """Issue 13 item 3: a page of the running agent's spool overwritten: the shipper does not stop
    silently — the failure is logged, STATUS= says why, the agent exits non-zero, and the next start
    recovers the spool and ships what survived."""

    def test_an_overwritten_spool_page_is_loud_and_mended_by_a_restart(self, agent_factory, receiver, tmp_path):
        notify = NotifySocket(tmp_path / "notify.sock")
        receiver.faults(force_status=503)
        agent: AgentProcess = agent_factory(receiver, batch={"max_events": 5, "max_wait_ms": 20})
        agent.env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
        agent.start()
        try:
            events = [{**GOOD, "id": f"page-{i:04d}",
                       "data": {**GOOD["data"], "details": {"pad": os.urandom(3000).hex()}}} for i in range(200)]
            with HookClient(agent.socket) as c:
                assert {a["status"] for a in c.request_many(events)} == {"ok"}
            # 5 events a batch at most (batch.max_events), so at least 40
            wait_until(lambda: agent.health()["spool"]["batches"] >= 40, what="40 batches spooled")
            _checkpoint(agent.spool_path)
            page = _leaf_page(agent.spool_path)
            with open(agent.spool_path, "r+b") as f:
                f.seek((page - 1) * 16384)
                f.write(os.urandom(16384))
            receiver.faults(force_status=None)
            assert agent.proc is not None
            rc = agent.proc.wait(60)
        finally:
            notify.close()
        assert rc not in (0, 2), rc  # 2 would tell systemd not to restart it
        log = agent.log_path.read_text()
        fatal = [json.loads(ln) for ln in log.splitlines() if "the agent exits so that it is started afresh" in ln]
        assert len(fatal) == 1 and "malformed" in fatal[0]["reason"], fatal
        assert any("malformed" in s for s in notify.lines("STATUS=")), notify.lines("STATUS=")
        agent.proc = None
        agent.start()
        agent.wait_drained()
        recovered = [json.loads(ln) for ln in agent.log_path.read_text().splitlines() if "the spool was corrupt" in ln]
        assert len(recovered) == 1 and recovered[0]["level"] == "error"
        stored = {i for i in receiver.ids("user_activity") if i.startswith("page-")}
        missing = 200 - len(stored)
        # only the batches on the destroyed page are gone, the rest shipped
        assert 0 < missing < 100, missing
        assert agent.metric("alpacon_agent_spool_recoveries_total") == 1


    def test_a_write_that_finds_the_spool_damaged_ends_the_agent(self, agent_factory, receiver):
        """The page new batches go to is overwritten while the backend is down: the next push is
        answered error (not ok), and the agent exits non-zero for the start-up check to mend it."""
        import sqlite3

        receiver.faults(force_status=503)
        agent: AgentProcess = agent_factory(receiver, batch={"max_events": 5, "max_wait_ms": 20})
        agent.start()
        events = [{**GOOD, "id": f"write-{i:04d}", "data": {**GOOD["data"], "details": {"pad": "x" * 2000}}}
                  for i in range(100)]
        with HookClient(agent.socket) as c:
            assert {a["status"] for a in c.request_many(events)} == {"ok"}
        _checkpoint(agent.spool_path)
        db = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True)
        (last,) = db.execute("SELECT pageno FROM dbstat WHERE name='batches' AND pagetype='leaf'"
                             " ORDER BY path DESC LIMIT 1").fetchone()
        db.close()
        with open(agent.spool_path, "r+b") as f:
            f.seek((last - 1) * 16384)
            f.write(os.urandom(16384))
        with HookClient(agent.socket, timeout=30) as c:
            answer = c.emit(**GOOD)
        assert answer["status"] == "error" and "malformed" in answer["reason"], answer
        assert agent.proc is not None
        assert agent.proc.wait(60) == 1
        log = agent.log_path.read_text()
        fatal = [json.loads(ln) for ln in log.splitlines() if "the agent exits so that it is started afresh" in ln]
        assert len(fatal) == 1 and "malformed" in fatal[0]["reason"] and fatal[0]["level"] == "critical"
        assert "Traceback" not in log


class TestSourcesResumeAfterRecovery:
    """Issue 13 item 4: when the checkpoints did not survive, sources go back to the oldest data on
    disk (duplicates are harmless, losses are not)."""

    def test_a_file_source_rereads_from_the_start_when_its_checkpoint_is_lost(self, agent_factory, receiver,
                                                                              tmp_path):
        """A syslog file read with start_at end; while the agent is down, 30 lines are appended and
        the spool is destroyed. The fresh spool has no checkpoint, so the file is read from its start:
        the 30 lines arrive (with harmless duplicates of the earlier ones)."""
        log_file = tmp_path / "app.log"

        def write(tag: str, n: int) -> None:
            with open(log_file, "a") as f:
                for i in range(n):
                    f.write(f"Dec  1 20:00:00 host app[7]: {tag} line {i}\n")

        write("before", 10)
        agent: AgentProcess = agent_factory(receiver, collectors={
            "syslog": {"enabled": True, "paths": [str(log_file)], "start_at": "end"}})
        agent.start()
        write("first", 20)

        def messages() -> list[str]:
            return [e["data"]["message"] for e in receiver.events("system_log")]

        wait_until(lambda: sum("first line" in m for m in messages()) == 20, what="the first 20 lines stored")
        assert agent.stop() == 0
        write("while-down", 30)
        (Path(agent.config["state_dir"]) / "spool.db").write_bytes(os.urandom(65536))
        agent.start()
        wait_until(lambda: sum("while-down line" in m for m in messages()) == 30, timeout=60,
                   what="the 30 lines written while the agent was down")
        assert sum("before line" in m for m in messages()) == 10  # read from the start of the file
        assert "the spool was corrupt" in agent.log_path.read_text()
