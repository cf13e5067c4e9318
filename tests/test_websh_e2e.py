"""Websh end to end: recorder -> real agent (hook API, spool, shipper) -> reference receiver."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BIN, AgentProcess, ReceiverProcess
from tests.support import need_binary, need_root, wait_until
from tests.test_websh_session import BASH_PROFILE, BASHRC, Session

TEST_USER = "wsaudit"
TEST_GROUP = "wsaudit-extra"
SUDOERS = Path("/etc/sudoers.d/zz-alpacon-websh-test")


def session_view(receiver: ReceiverProcess, sid: str) -> dict[str, Any] | None:
    for item in receiver.view("websh-sessions", session_id=sid):
        return item
    return None


def closed_in_receiver(receiver: ReceiverProcess, sid: str) -> dict[str, Any] | None:
    item = session_view(receiver, sid)
    return item if item and item.get("state") == "closed" else None


def agent_session(tmp: Path, agent: AgentProcess, sid: str, command: list[str], *args: str) -> Session:
    """A recorded session delivering to ``agent`` (later flags override the Session defaults)."""
    return Session(tmp, None, command, sid=sid, socket=agent.socket,
                   args=("--config", str(agent.config_path), *args))


@pytest.fixture
def test_user() -> Iterator[tuple[str, str]]:
    """A real user with a password, a supplementary group and sudo rights; removed afterwards."""
    need_root()
    need_binary("useradd")
    need_binary("sudo")
    password = "Pw-" + secrets.token_hex(8)
    subprocess.run(["userdel", "-r", TEST_USER], capture_output=True)
    subprocess.run(["groupdel", TEST_GROUP], capture_output=True)
    subprocess.run(["groupadd", TEST_GROUP], check=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-G", TEST_GROUP, TEST_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{TEST_USER}:{password}\n", text=True, check=True)
    home = Path(f"/home/{TEST_USER}")
    (home / ".bash_profile").write_text(BASH_PROFILE)
    (home / ".bashrc").write_text(BASHRC)
    for f in (home / ".bash_profile", home / ".bashrc"):
        subprocess.run(["chown", f"{TEST_USER}:{TEST_USER}", str(f)], check=True)
    SUDOERS.write_text(f"{TEST_USER} ALL=(ALL) ALL\n")
    SUDOERS.chmod(0o440)
    try:
        yield TEST_USER, password
    finally:
        SUDOERS.unlink(missing_ok=True)
        subprocess.run(["userdel", "-r", TEST_USER], capture_output=True)
        subprocess.run(["groupdel", TEST_GROUP], capture_output=True)


def files_blob(*paths: Path) -> bytes:
    """The raw bytes of database files and their WAL/journal companions."""
    out = b""
    for p in paths:
        for q in (p, Path(str(p) + "-wal"), Path(str(p) + "-journal"), Path(str(p) + "-shm")):
            if q.exists():
                out += q.read_bytes()
    return out


class TestWebshEndToEnd:
    def test_session_metadata_duration_and_commands_in_receiver(
        self, tmp_path: Path, agent: AgentProcess, receiver: ReceiverProcess
    ) -> None:
        """The session's metadata, duration and its command records reach the receiver."""
        s = agent_session(tmp_path, agent, "e2e-meta", [need_binary("bash")])
        s.prompt()
        s.run("echo one")
        s.run("cd /tmp && false")
        s.child.send("exit\r")
        assert s.finish() == 1  # exit with no argument: the last command's status
        item = wait_until(lambda: closed_in_receiver(receiver, "e2e-meta"), 30, what="session in receiver")
        assert item["username"] == "root" and item["operator"] == "alice"
        assert item["browser"] == "TestBrowser/1.0" and item["remote_ip"] == "10.1.2.3"
        assert item["groupname"] == "root" and item["server"] == "test-server"
        assert item["duration_ms"] > 0 and item["started_at"] and item["ended_at"]
        assert item["command_count"] == 3 and item["exit_status"] == 1
        cmds = wait_until(lambda: len(session_view(receiver, "e2e-meta")["commands"]) == 3 and
                          session_view(receiver, "e2e-meta")["commands"], 30, what="commands")
        assert [(c["seq"], c["command"], c["exit_code"]) for c in cmds] == [
            (1, "echo one", 0), (2, "cd /tmp && false", 1), (3, "exit", 1)]

    def test_passwords_appear_nowhere(
        self, tmp_path: Path, agent: AgentProcess, receiver: ReceiverProcess, test_user: tuple[str, str]
    ) -> None:
        """A password at read -s and at a real sudo prompt is in no record, spool or receiver."""
        user, password = test_user
        read_secret = "Rs-" + secrets.token_hex(8)
        s = agent_session(tmp_path, agent, "e2e-pw", [], "--user", user)
        s.prompt()
        s.child.send("read -rs -p 'pw: ' PW\r")
        s.child.expect_exact("pw: ")
        s.child.send(read_secret + "\r")
        s.prompt()
        s.child.send("sudo -k; sudo -p 'sudo-pw: ' id -u\r")
        s.child.expect_exact("sudo-pw: ")
        s.child.send(password + "\r")
        s.child.expect_exact("\r\n0\r\n")
        s.prompt()
        s.child.send("exit\r")
        assert s.finish() == 0
        item = wait_until(lambda: closed_in_receiver(receiver, "e2e-pw"), 30, what="session in receiver")
        wait_until(lambda: len(session_view(receiver, "e2e-pw")["commands"]) == 3, 30, what="commands")
        cmds = [c["command"] for c in session_view(receiver, "e2e-pw")["commands"]]
        assert cmds == ["read -rs -p 'pw: ' PW", "sudo -k; sudo -p 'sudo-pw: ' id -u", "exit"]
        assert item["username"] == user
        agent.wait_drained()
        everywhere = (
            json.dumps(receiver.events()).encode()
            + files_blob(agent.spool_path, receiver.db, tmp_path / "queue.db")
        )
        for secret in (read_secret, password):
            assert secret.encode() not in everywhere
            assert secret.encode() not in bytes(s.log)

    def test_agent_down_during_session_loses_nothing(
        self, tmp_path: Path, agent: AgentProcess, receiver: ReceiverProcess
    ) -> None:
        """Records made while the agent is stopped arrive once it is back: none lost, none twice."""
        s = agent_session(tmp_path, agent, "e2e-down", [need_binary("bash")])
        s.prompt()
        s.run("echo before")
        wait_until(lambda: session_view(receiver, "e2e-down") and
                   len(session_view(receiver, "e2e-down")["commands"]) == 1, 30, what="first record")
        agent.stop()
        for i in range(5):
            s.run(f"echo during-{i}")
        agent.start()
        s.run("echo after")
        s.child.send("exit\r")
        assert s.finish() == 0
        wait_until(lambda: closed_in_receiver(receiver, "e2e-down"), 30, what="session closed")
        wait_until(lambda: len(session_view(receiver, "e2e-down")["commands"]) == 8, 30, what="all records")
        cmds = session_view(receiver, "e2e-down")["commands"]
        assert [c["command"] for c in cmds] == (
            ["echo before"] + [f"echo during-{i}" for i in range(5)] + ["echo after", "exit"])
        assert [c["seq"] for c in cmds] == list(range(1, 9))
        ids = receiver.ids("websh_command")
        assert len(ids) == len(set(ids)) == 8

    def test_leftovers_are_delivered_later(
        self, tmp_path: Path, agent: AgentProcess, receiver: ReceiverProcess
    ) -> None:
        """A session that ends while the agent is down leaves its records queued for --flush-queue."""
        agent.stop()
        s = agent_session(tmp_path, agent, "e2e-later", [need_binary("bash")], "--flush-timeout", "0.3")
        s.prompt()
        s.run("echo queued")
        s.child.send("exit\r")
        assert s.finish() == 0
        agent.start()
        r = subprocess.run(
            [str(BIN / "alpacon-agent"), "websh", "--flush-queue", "--queue", str(tmp_path / "queue.db"),
             "--config", str(agent.config_path), "--flush-timeout", "10"],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        item = wait_until(lambda: closed_in_receiver(receiver, "e2e-later"), 30, what="session delivered")
        wait_until(lambda: len(session_view(receiver, "e2e-later")["commands"]) == 2, 30, what="commands")
        assert item["command_count"] == 2


class TestUserSwitch:
    def test_shell_runs_with_the_users_ids_groups_and_env(
        self, tmp_path: Path, test_user: tuple[str, str]
    ) -> None:
        """As root with --user, ``id`` shows the user's uid, gid and groups; env and cwd are the user's."""
        user, _ = test_user
        want = subprocess.run(["id", user], capture_output=True, text=True, check=True).stdout.strip()
        s = Session(tmp_path, None, [], sid="user-1", args=("--user", user))
        s.prompt()
        s.run("id")
        s.run('echo "env:$HOME:$USER:$LOGNAME:$SHELL:$(pwd)"')
        s.child.send("exit\r")
        assert s.finish() == 0
        screen = bytes(s.log).decode()
        assert want in screen
        assert f"env:/home/{user}:{user}:{user}:/bin/bash:/home/{user}" in screen
        assert TEST_GROUP in want


def test_cli_help_lists_websh() -> None:
    """``alpacon-agent websh`` is a registered subcommand."""
    r = subprocess.run([sys.executable, "-m", "agent.cli", "websh", "--help"], capture_output=True, text=True,
                       cwd=str(Path(__file__).parent.parent))
    assert r.returncode == 0 and "--record-io" in r.stdout and "--flush-queue" in r.stdout

