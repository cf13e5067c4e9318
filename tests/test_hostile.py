"""Hostile input at the agent's boundaries, played by the adversary: each case asserts the bound or the
refusal, not only that nothing crashed. One class per boundary."""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
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
        """A FIFO (which would block) or /dev/zero (which never ends) is refused as not a regular file."""
        fifo = tmp_path / "agent.yaml"
        os.mkfifo(fifo)
        for path in (fifo, Path("/dev/zero")):
            r = check_config(path)
            assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr

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
