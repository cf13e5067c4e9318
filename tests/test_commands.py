"""Command executions: output capping, request validation, and ``alpacon-agent exec`` through a
real agent and receiver (success, failure, timeout, scheduled, agent killed mid-command)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.errors import InputError
from agent.hookclient import HookClient
from collectors.commands.client import parse_at
from collectors.commands.runner import OutputCap, parse_request
from tests.harness import BIN, AgentProcess, ReceiverProcess, deep_merge
from tests.support import need_root, wait_until

ROOT = SimpleNamespace(uid=0, gid=0, pid=1, user="root")


def nobody() -> SimpleNamespace:
    pw = pwd.getpwnam("nobody")
    return SimpleNamespace(uid=pw.pw_uid, gid=pw.pw_gid, pid=1, user="nobody")


class TestOutputCap:
    def test_small_output_kept_whole(self) -> None:
        """Output under the cap is kept byte for byte."""
        c = OutputCap(1024)
        c.feed(b"hello ")
        c.feed(b"world\n")
        assert (c.text(), c.truncated, c.total) == ("hello world\n", False, 12)

    def test_head_and_tail_kept(self) -> None:
        """Output over the cap keeps its first and last halves and says how much was left out."""
        c = OutputCap(100)
        c.feed(b"H" * 50)
        for _ in range(1000):
            c.feed(b"m" * 100)
        c.feed(b"T" * 50)
        text = c.text()
        assert text.startswith("H" * 50) and text.endswith("T" * 50)
        assert c.truncated and f"[{100_000} bytes omitted]" in text
        assert len(text) < 200

    def test_invalid_utf8(self) -> None:
        """Invalid UTF-8 in output is replaced, not an error."""
        c = OutputCap(1024)
        c.feed(b"ok \xff\xfe\n")
        assert c.text() == "ok \ufffd\ufffd\n"


class TestParseRequest:
    def test_defaults(self) -> None:
        """An argv request runs as the caller with the configured timeout; the line is shell-quoted."""
        r = parse_request({"op": "exec", "argv": ["echo", "a b"]}, ROOT, 60.0, False)
        assert (r.line, r.user, r.operator, r.timeout_s, r.kill, r.due) == (
            "echo 'a b'",
            "root",
            "root",
            60.0,
            False,
            None,
        )
        assert parse_request({"argv": ["echo hi; id"]}, ROOT, 60.0, False).line == "echo hi; id"

    def test_schedule(self) -> None:
        """'in_s' and 'at' (epoch or RFC 3339) give the due time."""
        r = parse_request({"line": "true", "in_s": 30}, ROOT, 60.0, False, now=1000.0)
        assert r.due == 1030.0 and r.state == "scheduled" and r.scheduled_at
        r = parse_request({"line": "true", "at": "2030-01-01T00:00:00Z"}, ROOT, 60.0, False, now=1.89e9)
        assert r.due == 1893456000.0

    @pytest.mark.parametrize(
        ("msg", "why"),
        [
            ({"op": "exec"}, "a command is required"),
            ({"line": "   "}, "a command is required"),
            ({"argv": []}, "non-empty list"),
            ({"argv": ["a", 1]}, "non-empty list"),
            ({"argv": "ls"}, "non-empty list"),
            ({"line": "a", "argv": ["a"]}, "not both"),
            ({"line": "a\x00b"}, "NUL"),
            ({"line": "x" * 70_000}, "longer than"),
            ({"line": "true", "user": "no-such-user-xyz"}, "no such user"),
            ({"line": "true", "user": ["root"]}, "user name"),
            ({"line": "true", "timeout_s": 0}, "timeout_s"),
            ({"line": "true", "timeout_s": "5"}, "timeout_s"),
            ({"line": "true", "timeout_s": True}, "timeout_s"),
            ({"line": "true", "in_s": -1}, "in_s"),
            ({"line": "true", "at": "tomorrow-ish"}, "RFC 3339"),
            ({"line": "true", "at": 1, "in_s": 1}, "not both"),
            ({"line": "true", "in_s": 10 * 365 * 86400}, "a year"),
            ({"line": "true", "kill_on_timeout": "yes"}, "kill_on_timeout"),
            ({"line": "true", "operator": "o" * 300}, "operator"),
            ({"line": "true", "env": {"LD_PRELOAD": "/tmp/x.so"}}, "unknown fields: env"),
        ],
    )
    def test_rejects(self, msg: dict[str, Any], why: str) -> None:
        """Malformed or hostile requests are refused with a reason that names the problem."""
        with pytest.raises(InputError, match=why):
            parse_request(msg, ROOT, 60.0, False)

    def test_non_root_cannot_run_as_another_user(self) -> None:
        """A caller that is not root may only run commands as itself."""
        with pytest.raises(InputError, match="only root"):
            parse_request({"line": "id", "user": "root"}, nobody(), 60.0, False)
        assert parse_request({"line": "id"}, nobody(), 60.0, False).user == "nobody" or os.geteuid() != 0

    def test_parse_at(self) -> None:
        """--at takes epoch seconds, ISO 8601, or the next HH:MM."""
        assert parse_at("1700000000") == 1700000000.0
        assert parse_at("2030-01-01T00:00:00Z") == 1893456000.0
        now = time.time()
        assert now < parse_at("12:00", now) <= now + 86400
        for bad in ("25:00", "soon", ""):
            with pytest.raises(ValueError):
                parse_at(bad)


# --------------------------------------------------------------------------- through the agent


def exec_cli(agent: AgentProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "alpacon-agent"), "exec", "--config", str(agent.config_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def command_rows(receiver: ReceiverProcess) -> dict[str, dict[str, Any]]:
    return {row["line"]: row for row in receiver.view("commands")}


def wait_status(receiver: ReceiverProcess, line: str, status: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        row = command_rows(receiver).get(line)
        return row if row and row["status"] == status else None

    return wait_until(done, timeout, what=f"command {line!r} {status}")


def statuses(row: dict[str, Any]) -> list[str]:
    return [h["status"] for h in row["history"]]


@pytest.fixture
def cmd_agent(agent_factory: Any, receiver: ReceiverProcess) -> AgentProcess:
    a = agent_factory(receiver, collectors={"commands": {"enabled": True, "max_output_bytes": 4096}})
    a.start()
    return a


class TestExecThroughAgent:
    def test_success(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """A succeeding command: exit 0 and its output for the caller; running → success in the history."""
        r = exec_cli(cmd_agent, "--operator", "Alice Admin", "--", "echo out; echo err >&2")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "out\nerr\n"
        row = wait_status(receiver, "echo out; echo err >&2", "success")
        assert statuses(row) == ["running", "success"]
        assert (row["exit_code"], row["result"], row["operator"], row["shell"]) == (
            0,
            "out\nerr\n",
            "Alice Admin",
            "system",
        )
        assert row["started_at"] and row["finished_at"]

    def test_failure(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """A failing command: its exit code for the caller and in the history, status failed."""
        r = exec_cli(cmd_agent, "--", "echo nope; exit 7")
        assert r.returncode == 7 and r.stdout == "nope\n"
        row = wait_status(receiver, "echo nope; exit 7", "failed")
        assert statuses(row) == ["running", "failed"] and row["exit_code"] == 7 and row["result"] == "nope\n"

    def test_timeout_stuck_then_killed(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """Past its timeout a command is reported stuck, then (kill on timeout) killed and failed."""
        r = exec_cli(cmd_agent, "--timeout", "0.5", "--kill-on-timeout", "--", "echo started; sleep 60")
        assert r.returncode == 124 and r.stdout == "started\n"
        row = wait_status(receiver, "echo started; sleep 60", "failed")
        assert statuses(row) == ["running", "stuck", "failed"]
        assert row["exit_code"] == 128 + signal.SIGKILL and "timeout" in row["reason"]

    def test_timeout_stuck_then_finishes(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """Without kill on timeout a slow command is reported stuck and later its real outcome."""
        r = exec_cli(cmd_agent, "--timeout", "0.3", "--", "sleep 1; echo late")
        assert r.returncode == 0 and r.stdout == "late\n"
        row = wait_status(receiver, "sleep 1; echo late", "success")
        assert statuses(row) == ["running", "stuck", "success"]

    def test_reload_leaves_a_running_command_alone(
        self, cmd_agent: AgentProcess, receiver: ReceiverProcess, tmp_path: Path
    ) -> None:
        """A reload that leaves the collectors' settings as they were (here: batching) keeps the
        collectors running: a command in progress finishes and reports its real outcome."""
        go = tmp_path / "go"
        line = f"while [ ! -e {go} ]; do sleep 0.05; done; echo done"
        proc = subprocess.Popen(
            [str(BIN / "alpacon-agent"), "exec", "--config", str(cmd_agent.config_path), "--", line],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_status(receiver, line, "running")
            cmd_agent.write_config(deep_merge(cmd_agent.config, {"batch": {"max_wait_ms": 50}}))
            cmd_agent.signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in cmd_agent.log_path.read_text(), 30, what="reload")
            go.touch()
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0 and out == "done\n", err
        row = wait_status(receiver, line, "success")
        assert statuses(row) == ["running", "success"]
        assert "kept running" in cmd_agent.log_path.read_text()

    def test_reload_changing_collectors_ends_a_command_and_says_so(
        self, cmd_agent: AgentProcess, receiver: ReceiverProcess, tmp_path: Path
    ) -> None:
        """A reload that changes collector settings starts them again: a command in progress is
        terminated, its caller is answered at once, and its record is reported failed."""
        line = f"while [ ! -e {tmp_path / 'never'} ]; do sleep 0.05; done"
        proc = subprocess.Popen(
            [str(BIN / "alpacon-agent"), "exec", "--config", str(cmd_agent.config_path), "--", line],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_status(receiver, line, "running")
            cmd_agent.write_config(
                deep_merge(cmd_agent.config, {"collectors": {"commands": {"max_output_bytes": 8192}}})
            )
            cmd_agent.signal(signal.SIGHUP)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 1 and "commands collector" in err, (out, err)
        row = wait_status(receiver, line, "failed")
        assert statuses(row) == ["running", "failed"] and "stopped while the command was running" in row["reason"]

    def test_output_capped(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """A huge output is capped with its head and tail kept."""
        line = "echo FIRST; head -c 5000000 /dev/zero | tr '\\0' x; echo; echo LAST"
        r = exec_cli(cmd_agent, "--", line)
        assert r.returncode == 0
        row = wait_status(receiver, line, "success")
        assert row["result"].startswith("FIRST\n") and row["result"].endswith("LAST\n")
        assert "bytes omitted" in row["result"] and len(row["result"]) < 8192

    def test_runs_as_user_with_clean_env(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """--user runs the command as that user, in its home, with a clean environment."""
        need_root()
        env = {**os.environ, "SECRET_TOKEN": "leak"}
        r = subprocess.run(
            [
                str(BIN / "alpacon-agent"),
                "exec",
                "--config",
                str(cmd_agent.config_path),
                "--user",
                "nobody",
                "--",
                "id -un; env | grep -c SECRET_TOKEN; pwd",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        home = pwd.getpwnam("nobody").pw_dir
        cwd = home if os.path.isdir(home) else "/"
        assert r.stdout == f"nobody\n0\n{cwd}\n"
        row = wait_status(receiver, "id -un; env | grep -c SECRET_TOKEN; pwd", "success")
        assert row["user"] == "nobody"

    def test_scheduled_survives_restart(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """A scheduled command is answered at once, survives an agent restart and runs when due."""
        r = exec_cli(cmd_agent, "--in", "3", "--", "echo scheduled-run")
        assert r.returncode == 0 and r.stdout.startswith("scheduled cmd-")
        wait_status(receiver, "echo scheduled-run", "scheduled")
        cmd_agent.stop()
        cmd_agent.start()
        row = wait_status(receiver, "echo scheduled-run", "success", timeout=30)
        assert statuses(row) == ["scheduled", "running", "success"]
        assert row["result"] == "scheduled-run\n" and row["scheduled_at"]

    def test_agent_killed_while_running(
        self, cmd_agent: AgentProcess, receiver: ReceiverProcess, tmp_path: Path
    ) -> None:
        """A command running when the agent is SIGKILLed is reported failed, with the reason, on restart."""
        pidfile = tmp_path / "cmd.pid"
        line = f"echo $$ > {pidfile}; sleep 120"
        client = subprocess.Popen(
            [str(BIN / "alpacon-agent"), "exec", "--config", str(cmd_agent.config_path), "--", line],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_status(receiver, line, "running")
            wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="command pid")
            cmd_agent.kill()
            assert client.wait(30) == 1  # the caller learns the agent went away
            cmd_agent.start()
            row = wait_status(receiver, line, "failed")
            assert statuses(row) == ["running", "failed"]
            assert "agent stopped while the command was running" in row["reason"]
        finally:
            if client.poll() is None:
                client.kill()
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def test_external_runner_lifecycle(self, cmd_agent: AgentProcess, receiver: ReceiverProcess) -> None:
        """An external runner's events with its own command_id update one command."""
        base = {"command_id": "runner-42", "shell": "system", "line": "apt-get upgrade", "operator": "ci"}
        with HookClient(cmd_agent.socket) as c:
            for status, extra in (("scheduled", {}), ("running", {}), ("success", {"exit_code": 0, "result": "done"})):
                assert c.emit("command", {**base, "status": status, **extra})["status"] == "ok"
                time.sleep(0.002)  # distinct millisecond timestamps order the history
        row = wait_status(receiver, "apt-get upgrade", "success")
        assert statuses(row) == ["scheduled", "running", "success"] and row["result"] == "done"

    def test_garbage_requests(self, cmd_agent: AgentProcess) -> None:
        """Malformed exec requests get a clear refusal and the agent keeps serving."""
        with HookClient(cmd_agent.socket) as c:
            for msg in (
                {"op": "exec"},
                {"op": "exec", "argv": [1, 2]},
                {"op": "exec", "line": "x" * 100_000},
                {"op": "exec", "line": "true", "user": "no-such-user-xyz"},
                {"op": "exec", "bogus": 1},
            ):
                ans = c.request(msg)
                assert ans["status"] == "invalid" and ans["reason"], ans
            assert c.request({"op": "exec", "line": "echo alive"})["output"] == "alive\n"
        r = exec_cli(cmd_agent)
        assert r.returncode == 2 and "no command" in r.stderr

    def test_non_finite_schedule_is_refused(self, cmd_agent: AgentProcess, tmp_path: Path) -> None:
        """--in/--at nan or inf is bad usage: never a command that runs at once instead of later."""
        flag = tmp_path / "ran"
        for args in (("--in", "nan"), ("--in", "inf"), ("--at", "nan"), ("--at", "1e999"), ("--timeout", "inf")):
            r = exec_cli(cmd_agent, *args, "--", f"echo {args[0]} >> {flag}")
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert "alpacon-agent exec:" in r.stderr
        with HookClient(cmd_agent.socket) as c:
            assert c.request({"op": "exec", "line": "echo alive"})["output"] == "alive\n"
        assert not flag.exists()

    def test_internal_commands(self, agent_factory: Any, receiver: ReceiverProcess, tmp_path: Path) -> None:
        """record_internal/run_internal record the agent's own jobs with shell 'internal'."""
        import asyncio

        from agent.collector import CollectorContext
        from collectors.commands.internal import record_internal, run_internal

        got: list[Any] = []

        async def emit(events: list[Any], cp: Any) -> None:
            got.extend(events)

        async def main() -> None:
            ctx = CollectorContext(server="s", emit_fn=emit)
            await record_internal(ctx, "logrotate /etc/alpacon-agent", exit_code=0, result="ok")
            assert await run_internal(ctx, ["sh", "-c", "echo hi; exit 3"]) == 3
            assert await run_internal(ctx, ["/no/such/program"]) is None

        asyncio.run(main())
        from agent.schema import validate_data

        for ev in got:
            validate_data("command", ev["data"])
        assert [(e["data"]["shell"], e["data"]["status"], e["data"].get("exit_code")) for e in got] == [
            ("internal", "success", 0),
            ("internal", "failed", 3),
            ("internal", "failed", None),
        ]
        assert got[1]["data"]["result"] == "hi\n"

    def test_exec_json_output(self, cmd_agent: AgentProcess) -> None:
        """--json prints the agent's whole answer."""
        r = exec_cli(cmd_agent, "--json", "--", "printf x")
        ans = json.loads(r.stdout)
        assert (ans["status"], ans["state"], ans["exit_code"], ans["output"]) == ("ok", "success", 0, "x")
