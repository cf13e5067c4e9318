"""Recorded sessions end to end at the PTY: real bash, zsh and sh driven through pexpect."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from agent.schema import validate_data
from tests.support import need_binary, wait_until
from tests.test_websh_queue import HookServer

PROMPT = "[ws]$ "
SECRET = "s3cr3t-Pw!42"

BASH_PROFILE = ". ~/.bashrc\n"
BASHRC = """\
PS1='[ws]$ '
HISTCONTROL=ignoreboth
PROMPT_COMMAND='ws_prompts=$((ws_prompts+1))'
PATH=$HOME/bin:$PATH
"""
ZSHRC = """\
PROMPT='[ws]$ '
unsetopt PROMPT_SP
setopt HIST_IGNORE_SPACE
ws_precmd() { ws_prompts=$((ws_prompts+1)) }
precmd_functions+=(ws_precmd)
PATH=$HOME/bin:$PATH
"""


def make_home(root: Path) -> Path:
    """A throwaway home with startup files that set a fixed prompt, and a command to complete."""
    home = root / "home"
    (home / "bin").mkdir(parents=True, exist_ok=True)
    (home / ".bash_profile").write_text(BASH_PROFILE)
    (home / ".bashrc").write_text(BASHRC)
    (home / ".zshrc").write_text(ZSHRC)
    tool = home / "bin" / "wstabcmd"
    tool.write_text('#!/bin/sh\necho "wstab:$*"\n')
    tool.chmod(0o755)
    return home


class Session:
    """``alpacon-agent websh`` under pexpect, delivering to a hook server."""

    def __init__(
        self,
        tmp: Path,
        server: HookServer | None,
        command: list[str],
        *,
        sid: str = "sess-1",
        args: tuple[str, ...] = (),
        home: Path | None = None,
        socket: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.home = home or make_home(tmp)
        self.sid = sid
        env = {
            "HOME": str(self.home),
            "PATH": f"{self.home}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "TERM": "xterm",
            "LANG": "C.UTF-8",
        }
        sock = socket or (str(server.path) if server else str(tmp / "nobody.sock"))
        argv = ["-m", "agent.cli", "websh", "--queue", str(tmp / "queue.db"), "--socket", sock,
                "--session-id", sid, "--operator", "alice", "--browser", "TestBrowser/1.0",
                "--remote-ip", "10.1.2.3", "--flush-timeout", "5", *args, "--", *command]
        env["PYTHONPATH"] = str(Path(__file__).parent.parent)
        self.child = pexpect.spawn(sys.executable, argv, env=env, cwd=str(cwd or Path(__file__).parent.parent),
                                   timeout=15, dimensions=(24, 80))
        self.log = bytearray()
        self.child.logfile_read = _Sink(self.log)

    def prompt(self) -> None:
        self.child.expect_exact(PROMPT)

    def run(self, text: str) -> None:
        """Type a command line (``\\r`` ends lines) and wait for the next prompt."""
        self.child.send(text + "\r")
        self.prompt()

    def finish(self) -> int:
        self.child.expect(pexpect.EOF, timeout=20)
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else 128 + (self.child.signalstatus or 0)


class _Sink:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def write(self, data: bytes) -> None:
        self.buf += data

    def flush(self) -> None:
        pass


def records(server: HookServer, sid: str) -> list[dict[str, Any]]:
    return [d for d in server.kinds("websh_command") if d["session_id"] == sid]


def closed(server: HookServer, sid: str) -> dict[str, Any] | None:
    for d in server.kinds("websh_session"):
        if d["session_id"] == sid and d["state"] == "closed":
            return d
    return None


def scripted_session(s: Session, shell: str) -> list[tuple[str, int | None, str, str]]:
    """Run every pitfall; return the expected records as (command, exit_code, cwd, source)."""
    H = str(s.home)
    exp: list[tuple[str, int | None, str, str]] = []

    def cmd(text: str, code: int | None, cwd: str = H, recorded: str | None = None, source: str = "shell") -> None:
        s.run(text)
        exp.append((recorded if recorded is not None else text.replace("\r", "\n"), code, cwd, source))

    s.prompt()
    cmd("echo one", 0)
    cmd("echo hello | tr a-z A-Z", 0)
    cmd("true && echo chained; false || echo recovered", 0)
    cmd("false", 1)
    cmd("(exit 3)", 3)
    cmd("false | true", 0)
    cmd("sh -c 'exit 7'", 7)
    s.run("")  # empty Enter: no record
    s.child.send("\x03")  # Ctrl-C at an empty prompt: no record
    s.prompt()
    s.child.send("echo never-run\x03")  # Ctrl-C on a half-typed line: no record
    s.prompt()
    cmd("cd /tmp", 0)
    cmd("pwd", 0, "/tmp")
    cmd("cd ~", 0, "/tmp")
    cmd("for i in 1 2; do\recho loop $i\rdone", 0)
    cmd("cat <<EOF\rline one\rline two\rEOF", 0)
    cmd('echo "multi\rline"', 0)
    # tab completion: the record holds the completed command
    s.child.send("wstab\t")
    s.child.expect_exact("wstabcmd")
    cmd("tabbed", 0, recorded="wstabcmd tabbed")
    # Ctrl-C during a command
    s.child.send("sleep 30\r")
    s.child.expect_exact("sleep 30")
    time.sleep(0.3)  # let sleep start; the assertion does not depend on this
    s.child.send("\x03")
    s.prompt()
    exp.append(("sleep 30", 130, H, "shell"))
    cmd("echo dup", 0)
    cmd("echo dup", 0)
    cmd(" echo spaced", 0)  # HISTCONTROL=ignorespace / HIST_IGNORE_SPACE cannot hide it
    cmd("echo password=hunter2", 0, recorded="echo password=[REDACTED]")
    # a password at a no-echo prompt
    read = "read -rs -p 'pw: ' PW" if shell == "bash" else "read -rs 'PW?pw: '"
    s.child.send(read + "\r")
    s.child.expect_exact("pw: ")
    s.child.send(SECRET + "\r")
    s.prompt()
    exp.append((read, 0, H, "shell"))
    s.child.send("echo len=${#PW}\r")
    s.child.expect_exact(f"len={len(SECRET)}")
    s.prompt()
    exp.append(("echo len=${#PW}", 0, H, "shell"))
    # full-screen programs: one record each, nothing from their keystrokes
    s.child.send("vim -u NONE -N wsfile.txt\r")
    s.child.expect_exact("wsfile.txt")
    s.child.send("ihello from vim\x1b")
    s.child.send(":wq\r")
    s.prompt()
    exp.append(("vim -u NONE -N wsfile.txt", 0, H, "shell"))
    s.child.send("less wsfile.txt\r")
    s.child.expect_exact("hello from vim")
    s.child.send("jjkq")
    s.prompt()
    exp.append(("less wsfile.txt", 0, H, "shell"))
    s.child.send("top -d 5\r")
    s.child.expect("load average")
    s.child.send("q")
    s.prompt()
    exp.append(("top -d 5", 0, H, "shell"))
    # a nested shell without integration: recorded through the typed lines
    s.child.send("sh\r")
    s.child.expect_exact("# ")
    s.child.send("echo nested-sh\r")
    s.child.expect_exact("nested-sh\r\n")
    s.child.send("exit\r")
    s.prompt()
    exp += [("echo nested-sh", None, H, "input"), ("exit", None, H, "input"), ("sh", 0, H, "shell")]
    # a 100 KB command, pasted: capped with a marker
    big = "echo " + "x" * 100_000 + " | wc -c"
    s.child.send("\x1b[200~" + big + "\x1b[201~\r")
    s.child.expect_exact("100001")
    s.prompt()
    exp.append(("<big>", 0, H, "shell"))
    s.child.send("echo héllo ✓\r".encode())
    s.prompt()
    exp.append(("echo héllo ✓", 0, H, "shell"))
    cmd("ls /nonexistent-dir", 2)
    cmd("echo $((6*7))", 0)
    cmd("printf '%s\\n' a b c | wc -l", 0)
    cmd("x=1; y=2; echo $((x+y))", 0)
    cmd("true", 0)
    s.child.send("exit\r")
    exp.append(("exit", 0, H, "shell"))
    return exp


def check_records(got: list[dict[str, Any]], exp: list[tuple[str, int | None, str, str]]) -> None:
    for d in got:
        validate_data("websh_command", d)
    assert [d["seq"] for d in got] == list(range(1, len(got) + 1))
    simplified = []
    for d in got:
        text = d["command"]
        if d.get("truncated"):
            assert text.startswith("echo xxxx") and "[truncated: 100013 bytes]" in text
            assert len(text.encode()) < 70_000
            text = "<big>"
        simplified.append((text, d["exit_code"], d["cwd"], d["source"]))
    assert simplified == exp
    for d in got:
        if d["source"] == "shell":
            assert d["duration_ms"] is not None and d["duration_ms"] >= 0 and d["started_at"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HookServer]:
    s = HookServer(tmp_path / "hook.sock").start()
    yield s
    s.stop()


class TestScriptedSession:
    @pytest.mark.parametrize("shell", ["bash", "zsh"])
    def test_every_pitfall_gives_exact_records(self, tmp_path: Path, server: HookServer, shell: str) -> None:
        """A 30+ command session covering every pitfall yields exactly the expected records."""
        path = need_binary(shell)
        for tool in ("vim", "less", "top"):
            need_binary(tool)
        s = Session(tmp_path, server, [path], sid=f"script-{shell}")
        exp = scripted_session(s, shell)
        assert s.finish() == 0
        assert len(exp) >= 30
        wait_until(lambda: closed(server, s.sid), 15, what="session closed event")
        got = records(server, s.sid)
        check_records(got, exp)
        blob = b"".join(server.raw)
        assert SECRET.encode() not in blob
        assert b"hunter2" not in blob
        end = closed(server, s.sid)
        assert end is not None
        validate_data("websh_session", end)
        assert end["command_count"] == len(exp) and end["exit_status"] == 0
        assert end["operator"] == "alice" and end["browser"] == "TestBrowser/1.0" and end["remote_ip"] == "10.1.2.3"
        assert end["duration_ms"] > 0
        # nothing of the recorder's marks reached the screen
        assert b"\x1b]6973" not in bytes(s.log)


def dash_prompt(s: Session) -> None:
    s.child.expect_exact("# " if os.geteuid() == 0 else "$ ")


class TestFallback:
    def test_plain_sh_records_typed_lines_with_editing(self, tmp_path: Path, server: HookServer) -> None:
        """With sh (no hooks) the typed lines are recorded, backspace/Ctrl-U/Ctrl-W applied."""
        sh = need_binary("sh")
        s = Session(tmp_path, server, [sh], sid="sh-1")
        dash_prompt(s)
        for keys, out in [
            ("echo abc\x7f\x7fX", "aX"),
            ("garbage words\x15echo after-u", "after-u"),
            ("echo one two\x17three", "one three"),
            ("echo héllo\x7fo", "héllo"),
        ]:
            s.child.send((keys + "\r").encode())
            s.child.expect_exact(out.encode())
            dash_prompt(s)
        s.child.send("stty -echo; printf 'pw: '; read -r PW; stty echo\r")
        s.child.expect_exact("pw: ")
        s.child.send(SECRET + "\r")
        dash_prompt(s)
        s.child.send("exit\r")
        assert s.finish() == 0
        wait_until(lambda: closed(server, s.sid), 15, what="session closed")
        got = [(d["command"], d["source"], d["exit_code"]) for d in records(server, s.sid)]
        assert got == [
            ("echo aX", "input", None),
            ("echo after-u", "input", None),
            ("echo one three", "input", None),
            ("echo héllo", "input", None),
            ("stty -echo; printf 'pw: '; read -r PW; stty echo", "input", 0),  # the last program's, from the kernel
            ("exit", "input", None),
        ]
        assert SECRET.encode() not in b"".join(server.raw)

    def test_unset_hooks_fall_back_to_typed_lines(self, tmp_path: Path, server: HookServer) -> None:
        """A user who unsets the hooks is still recorded, through the typed lines."""
        s = Session(tmp_path, server, [need_binary("bash")], sid="unset-1")
        s.prompt()
        s.run("unset PROMPT_COMMAND PS0")
        s.run("echo after-unset")
        s.run("echo second")
        wait_until(lambda: len(records(server, s.sid)) >= 3, 15, what="fallback records")
        s.run("echo third")
        s.child.send("exit\r")
        assert s.finish() == 0
        wait_until(lambda: closed(server, s.sid), 15, what="session closed")
        got = [(d["command"], d["source"]) for d in records(server, s.sid)]
        assert got == [
            ("unset PROMPT_COMMAND PS0", "shell"),
            ("echo after-unset", "input"),
            ("echo second", "input"),
            ("echo third", "input"),
            ("exit", "input"),
        ]


def _screen(log: bytes) -> bytes:
    return log.replace(b"\r\n", b"\n")


class TestTransparency:
    COMMANDS = [
        "echo one",
        "printf 'a\\tb\\n'",
        "for i in 1 2; do\recho loop $i\rdone",
        "cat <<EOF\rheredoc body\rEOF",
        "false",
        "ls /nonexistent-dir",
        "printf '\\033]0;title\\007\\033]6973;notours;S;eA==\\007visible\\n'",
        "echo $((6*7))",
    ]

    def _drive(self, child: pexpect.spawn) -> None:
        child.expect_exact(PROMPT)
        for c in self.COMMANDS:
            child.send(c + "\r")
            child.expect_exact(PROMPT)
        child.send("exit\r")
        child.expect(pexpect.EOF)
        child.close()

    @pytest.mark.parametrize("shell", ["bash", "zsh"])
    def test_bytes_match_a_plain_pty(self, tmp_path: Path, server: HookServer, shell: str) -> None:
        """What the user sees through the recorder is byte-identical to the bare shell's PTY."""
        path = need_binary(shell)
        home = make_home(tmp_path)
        # the same shell mode both ways: bash as an interactive non-login shell (a login bash is
        # emulated by the rcfile wrapper, which bash then reports as "exit" instead of "logout"),
        # zsh as a login shell
        args = ("--no-login",) if shell == "bash" else ()
        s = Session(tmp_path, server, [path], sid=f"same-{shell}", home=home, args=args, cwd=home)
        self._drive(s.child)
        recorded = bytes(s.log)
        plain_log = bytearray()
        env = {"HOME": str(home), "PATH": f"{home}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
               "TERM": "xterm", "LANG": "C.UTF-8"}
        plain = pexpect.spawn(path, ["-i"] if shell == "bash" else ["-l", "-i"], env=env, cwd=str(home),
                              timeout=15, dimensions=(24, 80))
        plain.logfile_read = _Sink(plain_log)
        self._drive(plain)
        assert recorded == bytes(plain_log)
        assert b"notours" in recorded  # a foreign mark-like sequence passes through untouched
        assert len(records(server, s.sid)) == len(self.COMMANDS) + 1 or wait_until(
            lambda: len(records(server, s.sid)) == len(self.COMMANDS) + 1, 10, what="records")


class TestRelay:
    def test_exit_status_and_window_size(self, tmp_path: Path, server: HookServer) -> None:
        """Window size changes reach the shell; the shell's exit status is the recorder's."""
        s = Session(tmp_path, server, [need_binary("bash")], sid="relay-1")
        s.prompt()
        s.run("stty size")
        assert b"24 80" in bytes(s.log)
        s.child.setwinsize(40, 120)
        s.child.send("stty size\r")
        s.child.expect_exact("40 120")
        s.prompt()
        s.child.send("exit 5\r")
        assert s.finish() == 5
        end = wait_until(lambda: closed(server, s.sid), 15, what="session closed")
        assert end["exit_status"] == 5 and end["command_count"] == 3

    def test_terminate_hangs_up_the_shell_and_reports(self, tmp_path: Path, server: HookServer) -> None:
        """SIGTERM to the recorder hangs up the shell; the session still closes with a record."""
        s = Session(tmp_path, server, [need_binary("bash")], sid="term-1")
        s.prompt()
        s.run("echo before")
        s.child.kill(15)
        status = s.finish()
        assert status in (129, 128 + 15, 1)
        end = wait_until(lambda: closed(server, s.sid), 15, what="session closed")
        assert end["command_count"] == 1

    def test_unknown_user_is_a_clear_error(self, tmp_path: Path, server: HookServer) -> None:
        """An unknown --user stops with a clear message and exit status 2."""
        s = Session(tmp_path, server, [], sid="bad-user", args=("--user", "no-such-user-xyz"))
        s.child.expect_exact("unknown user")
        assert s.finish() == 2

    def test_record_io_asciicast(self, tmp_path: Path, server: HookServer) -> None:
        """--record-io writes asciicast v2 output without marks and no input unless asked."""
        import json

        cast = tmp_path / "s.cast"
        s = Session(tmp_path, server, [need_binary("bash")], sid="cast-0", args=("--record-io", str(cast)))
        s.prompt()
        s.run("echo cast-out")
        s.child.send("exit\r")
        s.finish()
        lines = cast.read_text().splitlines()
        header = json.loads(lines[0])
        assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
        events = [json.loads(x) for x in lines[1:]]
        out = "".join(e[2] for e in events if e[1] == "o")
        assert "cast-out" in out and "\x1b]6973" not in out
        assert not [e for e in events if e[1] == "i"]
        assert all(isinstance(e[0], float | int) for e in events)

    def test_record_input_never_while_echo_is_off(self, tmp_path: Path, server: HookServer) -> None:
        """--record-input keeps typed input, but nothing typed while the terminal does not echo."""
        import json

        cast = tmp_path / "i.cast"
        s = Session(tmp_path, server, [need_binary("sh")], sid="cast-1",
                    args=("--record-io", str(cast), "--record-input"))
        dash_prompt(s)
        s.child.send("echo typed-in\r")
        s.child.expect_exact("typed-in\r\n")
        dash_prompt(s)
        s.child.send("stty -echo; printf 'pw: '; read -r PW; stty echo\r")
        s.child.expect_exact("pw: ")
        s.child.send(SECRET + "\r")
        dash_prompt(s)
        s.child.send("exit\r")
        s.finish()
        events = [json.loads(x) for x in cast.read_text().splitlines()[1:]]
        typed = "".join(e[2] for e in events if e[1] == "i")
        assert "echo typed-in" in typed
        assert SECRET not in cast.read_text()

    def test_record_io_size_cap(self, tmp_path: Path, server: HookServer) -> None:
        """The asciicast file stops at its size cap with a notice."""
        cast = tmp_path / "big.cast"
        s = Session(tmp_path, server, [need_binary("bash")], sid="cast-cap",
                    args=("--record-io", str(cast), "--record-io-max-bytes", "4000"))
        s.prompt()
        s.run("seq 1 5000")
        s.child.send("exit\r")
        s.finish()
        text = cast.read_text()
        assert len(text.encode()) < 4000 + 200
        assert "size cap reached" in text
