"""A Record the session's user cannot forge or evade: real bash and zsh through the recorder, as root.

Each test plays one way a session's user (or ordinary shell use) used to empty or rewrite the
Record, and checks what the kernel's exec trail, the typed keys and the marks make of it.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.schema import validate_data
from tests.support import need_binary, need_root, wait_until
from tests.test_websh_queue import HookServer
from tests.test_websh_session import Session, closed, records

OTHER = "wswitness"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HookServer]:
    s = HookServer(tmp_path / "hook.sock").start()
    yield s
    s.stop()


def start(tmp_path: Path, server: HookServer, shell: str, sid: str) -> Session:
    need_root()
    s = Session(tmp_path, server, [need_binary(shell)], sid=sid)
    s.prompt()
    return s


def end(s: Session, server: HookServer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    s.finish()
    last = wait_until(lambda: closed(server, s.sid), 20, what="session closed event")
    got = records(server, s.sid)
    for d in got:
        validate_data("websh_command", d)
    validate_data("websh_session", last)
    assert last["exec_trail"]["mode"] == "kernel", last["exec_trail"]
    return got, last


def by_text(got: list[dict[str, Any]], text: str) -> dict[str, Any]:
    found = [d for d in got if d["command"].strip() == text]
    assert found, f"no record {text!r} in {[d['command'] for d in got]}"
    return found[0]


def programs(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for d in got for p in d.get("programs", [])]


def ran(got: list[dict[str, Any]], *argv: str) -> dict[str, Any]:
    found = [p for p in programs(got) if p["argv"] == list(argv)]
    assert found, f"no program {argv} in {[p['argv'] for p in programs(got)]}"
    return found[0]


def say(s: Session, line: str, shows: str) -> None:
    """Type ``line`` and wait for ``shows`` on the screen (for prompts the test does not know)."""
    s.child.send(line + "\r")
    s.child.expect_exact(shows)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_commands_typed_once_the_hooks_are_gone_are_kept(tmp_path: Path, server: HookServer, shell: str) -> None:
    """Case 1: the hooks removed, two quick commands and exit within the fallback's wait."""
    s = start(tmp_path, server, shell, f"unhook-{shell}")
    s.run("unset PROMPT_COMMAND PS0" if shell == "bash" else "preexec_functions=() precmd_functions=()")
    say(s, "echo quick-1", "quick-1\r\n")
    say(s, "echo quick-2", "quick-2\r\n")
    s.child.send("exit\r")
    got, _ = end(s, server)
    texts = [d["command"] for d in got]
    assert "echo quick-1" in texts and "echo quick-2" in texts and "exit" in texts


def test_programs_after_exec_bash_are_kept_with_their_status(tmp_path: Path, server: HookServer) -> None:
    """Case 1, ``exec bash``: the new shell has no hooks; its programs and lines are still recorded."""
    s = start(tmp_path, server, "bash", "exec-bash")
    s.child.send("exec bash --norc -i\r")
    say(s, "/bin/echo after-exec-$((6*7))", "after-exec-42\r\n")
    say(s, "/bin/sh -c 'exit 5'; echo rc=$?", "rc=5\r\n")
    s.child.send("exit\r")
    got, _ = end(s, server)
    echo = by_text(got, "/bin/echo after-exec-$((6*7))")
    assert echo["exit_code"] == 0 and echo["exit_from"] == "kernel"
    assert ran(got, "/bin/echo", "after-exec-42")["exit_code"] == 0
    assert ran(got, "/bin/sh", "-c", "exit 5")["exit_code"] == 5


FORGE = {
    "bash": (
        "printf '\\033]6973;%s;S;%s\\007\\033]6973;%s;D;0\\007' $__alpacon_nonce "
        "$(printf '  9000  echo totally-innocent\\0/home' | base64 -w0) $__alpacon_nonce",
        "__alpacon_preexec() { builtin printf '\\033]6973;%s;S;%s\\007' \"$__alpacon_nonce\" "
        "\"$(builtin printf '  9999  ls\\0/tmp' | base64 -w0)\"; }",
    ),
    "zsh": (
        "printf '\\033]6973;%s;T;%s\\007\\033]6973;%s;D;0\\007' $__alpacon_nonce "
        "$(printf 'echo totally-innocent\\0/home' | base64 -w0) $__alpacon_nonce",
        "__alpacon_preexec() { print -rn -- $'\\e]6973;'\"$__alpacon_nonce;T;$(print -rn -- $'ls\\0/tmp' "
        "| base64 -w0)\"$'\\a' }",
    ),
}


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_forged_and_renamed_records_are_flagged_and_the_real_commands_kept(
    tmp_path: Path, server: HookServer, shell: str
) -> None:
    """Case 2: marks printed by hand with the nonce, and a preexec hook that says ``ls`` for all."""
    s = start(tmp_path, server, shell, f"forge-{shell}")
    forge, rename = FORGE[shell]
    s.run(forge)
    s.run(rename)
    s.run("rm -f /tmp/ws-forge-target")
    s.run("cat /etc/passwd >/dev/null")
    s.run("echo password=hunter2")  # the tampered reason quotes the keys: redacted like the command
    s.child.send("exit\r")
    got, last = end(s, server)
    assert b"hunter2" not in b"".join(server.raw)
    secret = by_text(got, "echo password=[REDACTED]")  # the typed text, whatever the marks said
    assert secret.get("tampered") or secret["source"] == "input"
    innocent = [d for d in got if d["command"] == "echo totally-innocent"]
    assert all(d.get("tampered") for d in innocent)
    printf = next(d for d in got if d["command"].startswith("printf '\\033]6973"))
    assert printf.get("tampered") and "forged" in printf["tampered"]
    rm = by_text(got, "rm -f /tmp/ws-forge-target")
    assert rm["tampered"] and "'ls'" in rm["tampered"] and "kernel" in rm["witnesses"]
    assert rm["cwd"] == str(s.home)  # read from /proc, not the forged mark's /tmp
    assert ran(got, "rm", "-f", "/tmp/ws-forge-target")["exit_code"] == 0
    cat = by_text(got, "cat /etc/passwd >/dev/null")
    assert "kernel" in cat["witnesses"] and ran(got, "cat", "/etc/passwd")["exit_code"] == 0
    assert not [d for d in got if d["command"] == "ls"]
    assert last["tampered_count"] >= 2


def test_edited_and_unhistoried_lines_keep_their_text(tmp_path: Path, server: HookServer) -> None:
    """Case 3: a leading-space line edited with the arrow keys under ignorespace; cmdhist off."""
    s = start(tmp_path, server, "bash", "edits")
    s.run("HISTCONTROL=ignorespace")
    s.child.send(" echo wrld" + "\x1b[D" * 3 + "o\r")
    s.child.expect_exact("world\r\n")
    s.prompt()
    s.child.send("\x01echo \x05-x\r")  # Ctrl-A, then Ctrl-E: "echo -x" typed out of order
    s.child.expect_exact("-x\r\n")
    s.prompt()
    s.run("shopt -u cmdhist")
    s.run("for i in 1 2\rdo echo it-$i\rdone")
    s.child.send("exit\r")
    got, _ = end(s, server)
    assert by_text(got, "echo world")["exit_code"] == 0
    assert by_text(got, "echo -x")
    loop = by_text(got, "for i in 1 2\ndo echo it-$i\ndone")
    assert loop["exit_code"] == 0 and not loop.get("tampered")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_exit_codes_and_durations_come_from_the_kernel_without_marks(
    tmp_path: Path, server: HookServer, shell: str
) -> None:
    """Case 4: the precmd hook replaced; the gap between commands is not a command's duration."""
    s = start(tmp_path, server, shell, f"noprecmd-{shell}")
    s.run("PROMPT_COMMAND='echo -n'" if shell == "bash" else "precmd_functions=()")
    s.run("/bin/false")
    time.sleep(1.5)  # an idle gap that must not count as the command's duration
    s.run("/bin/sh -c 'exit 4'")
    s.child.send("exit\r")
    got, _ = end(s, server)
    false = by_text(got, "/bin/false")
    assert false["exit_code"] == 1 and false["exit_from"] == "kernel" and false["duration_ms"] < 1000
    four = by_text(got, "/bin/sh -c 'exit 4'")
    assert four["exit_code"] == 4 and four["exit_from"] == "kernel"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_programs_in_a_nested_pty_are_in_the_record(tmp_path: Path, server: HookServer, shell: str) -> None:
    """Case 5: ``script -q /dev/null`` and ``pty.spawn``: what runs inside is recorded, with status."""
    need_binary("script")
    s = start(tmp_path, server, shell, f"nested-{shell}")
    s.child.send("script -q /dev/null\r")
    s.prompt()
    say(s, "/bin/echo inner-x", "inner-x\r\n")
    s.prompt()
    s.child.send("exit\r")
    s.prompt()
    s.child.send("python3 -c 'import pty; pty.spawn(\"/bin/sh\")'\r")
    s.child.expect_exact("# ")
    say(s, "/bin/echo inner-y; /bin/false", "inner-y\r\n")
    s.child.send("exit\r")
    s.prompt()
    s.child.send("exit\r")
    got, _ = end(s, server)
    assert ran(got, "/bin/echo", "inner-x")["exit_code"] == 0
    assert ran(got, "/bin/echo", "inner-y")["exit_code"] == 0
    assert ran(got, "/bin/false")["exit_code"] == 1
    assert by_text(got, "/bin/echo inner-x")["source"] == "input"  # the nested shell's line, too


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_sudo_i_records_the_nested_shells_cwd_and_user(tmp_path: Path, server: HookServer, shell: str) -> None:
    """Case 6: with ``use_pty`` the foreground is sudo; the cwd is read from the shell behind it."""
    need_binary("sudo")
    s = start(tmp_path, server, shell, f"sudo-i-{shell}")
    s.run("cd /usr")
    s.child.send("sudo -i\r")
    say(s, "echo ready-$((2+3))", "ready-5")
    say(s, "cd /etc", "\n")
    say(s, "pwd", "/etc\r\n")
    s.child.send("exit\r")
    s.prompt()
    s.child.send("exit\r")
    got, _ = end(s, server)
    root_home = pwd.getpwuid(0).pw_dir
    assert by_text(got, "cd /etc")["cwd"] == root_home
    pwd_rec = by_text(got, "pwd")
    assert pwd_rec["cwd"] == "/etc" and pwd_rec["user"] == "root"


@pytest.fixture
def other_user() -> Iterator[tuple[str, int]]:
    need_root()
    need_binary("useradd")
    subprocess.run(["userdel", "-r", OTHER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", OTHER], check=True, capture_output=True)
    try:
        yield OTHER, pwd.getpwnam(OTHER).pw_uid
    finally:
        subprocess.run(["userdel", "-r", OTHER], capture_output=True)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_su_records_name_the_user_they_ran_as(
    tmp_path: Path, server: HookServer, other_user: tuple[str, int], shell: str
) -> None:
    """Case 7: ``su - other``: the nested commands and their programs carry the other user."""
    name, uid = other_user
    need_binary("su")
    s = start(tmp_path, server, shell, f"su-{shell}")
    s.child.send(f"su - {name}\r")
    say(s, "echo ready-$((3+4))", "ready-7")
    say(s, "/bin/echo as-other", "as-other\r\n")
    s.child.send("exit\r")
    s.prompt()
    s.child.send("exit\r")
    got, _ = end(s, server)
    rec = by_text(got, "/bin/echo as-other")
    assert rec["user"] == name and rec["uid"] == uid
    prog = ran(got, "/bin/echo", "as-other")
    assert prog["uid"] == uid and prog["user"] == name
    assert by_text(got, f"su - {name}")["user"] == "root"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_a_pasted_pair_of_commands_both_get_their_exit_status(tmp_path: Path, server: HookServer, shell: str) -> None:
    """Case 8: two commands pasted at once (one write, no bracketed paste)."""
    s = start(tmp_path, server, shell, f"paste-{shell}")
    s.child.send("/bin/sh -c 'exit 3'\r/bin/echo pasted-2\r")
    s.child.expect_exact("pasted-2\r\n")
    s.prompt()
    s.child.send("false\rtrue\r")
    s.prompt()
    s.prompt()
    s.child.send("exit\r")
    got, _ = end(s, server)
    assert by_text(got, "/bin/sh -c 'exit 3'")["exit_code"] == 3
    assert by_text(got, "/bin/echo pasted-2")["exit_code"] == 0
    assert by_text(got, "false")["exit_code"] == 1 and by_text(got, "true")["exit_code"] == 0


def test_three_sessions_sharing_a_queue_deliver_each_row_once(tmp_path: Path) -> None:
    """Case 9: three sessions (bash, zsh, bash) with the agent down, then up: no row is sent by two
    deliverers."""
    need_root()
    sock = tmp_path / "late.sock"
    server = HookServer(sock)
    sessions = [Session(tmp_path, None, [need_binary(sh)], sid=f"shared-{i}", socket=str(sock))
                for i, sh in enumerate(("bash", "zsh", "bash"))]
    try:
        for s in sessions:
            s.prompt()
            s.run(f"echo before-{s.sid}")
        server.start()
        for s in sessions:
            s.run(f"echo after-{s.sid}")
            s.child.send("exit\r")
        for s in sessions:
            s.finish()
        for s in sessions:
            wait_until(lambda s=s: closed(server, s.sid), 30, what=f"{s.sid} closed")
        ids = server.ids()
        assert len(ids) == len(set(ids)), "a row was delivered twice"
        assert len(server.raw) == len(ids)
        for s in sessions:
            texts = [d["command"] for d in records(server, s.sid)]
            assert f"echo before-{s.sid}" in texts and f"echo after-{s.sid}" in texts
    finally:
        server.stop()


def test_a_2000_exec_loop_is_recorded_program_by_program(tmp_path: Path, server: HookServer) -> None:
    """Every one of 2,000 short execs in one typed command is in the Record with its argv and status."""
    s = start(tmp_path, server, "bash", "loop")
    s.run("for i in $(seq 1000); do /bin/true; /bin/echo n$i; done >/dev/null; echo loop-done")
    s.child.send("exit\r")
    got, _ = end(s, server)
    loop = next(d for d in got if d["command"].startswith("for i in $(seq 1000)"))
    progs = [p for d in got if d["seq"] == loop["seq"] or d.get("parent_seq") == loop["seq"]
             for p in d.get("programs", [])]
    trues = [p for p in progs if p["argv"] == ["/bin/true"] and p["exit_code"] == 0]
    echoes = {p["argv"][1] for p in progs if p["argv"] and p["argv"][0] == "/bin/echo" and p["exit_code"] == 0}
    share = (len(trues) + len(echoes)) / 2000
    print(f"recorded through the recorder: {share:.4f} of 2000 short execs with argv and exit status")
    assert len(trues) == 1000 and echoes == {f"n{i}" for i in range(1, 1001)}
    assert loop["programs_total"] == 2001  # seq, and the 2,000


def test_session_metadata_over_the_caps_is_clipped_not_lost(tmp_path: Path, server: HookServer) -> None:
    """Issue 13, defect 12: a 20,000-character browser and a 300-character operator."""
    need_root()
    s = Session(tmp_path, server, [need_binary("bash")], sid="clip",
                args=("--browser", "B" * 20_000, "--operator", "o" * 300, "--remote-ip", "9" * 200))
    s.prompt()
    s.run("echo clipped-session")
    s.child.send("exit\r")
    got, last = end(s, server)
    assert len(last["browser"]) == 1024 and "clipped: 20000 chars" in last["browser"]
    assert len(last["operator"]) == 256 and set(last["clipped"]) >= {"browser", "operator", "remote_ip"}
    assert by_text(got, "echo clipped-session")
    opened = [d for d in server.kinds("websh_session") if d["session_id"] == "clip" and d["state"] == "open"]
    assert opened and len(opened[0]["browser"]) == 1024


def _doctor_trail(config: Path, *prefix: str) -> dict[str, Any]:
    agent = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "alpacon-agent"
    proc = subprocess.run([*prefix, str(agent), "doctor", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("["), proc.stderr[-2000:]
    out = proc.stdout
    return next(r for r in json.loads(out) if r["name"] == "websh exec trail")


def test_doctor_reports_whether_the_exec_trail_can_be_had(tmp_path: Path) -> None:
    """``doctor`` names the exec trail: OK as root; as another user, a warning that says why."""
    need_root()
    need_binary("setpriv")
    import tempfile

    from tests.test_doctor import write_config

    readable = Path(tempfile.mkdtemp(prefix="ws-doctor-"))  # pytest's tmp_path is root's alone
    readable.chmod(0o755)
    config = write_config(readable, {})
    as_root = _doctor_trail(config)
    assert as_root["status"] == "OK" and "argv from the kernel" in as_root["detail"]
    try:
        nobody = _doctor_trail(config, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    finally:
        shutil.rmtree(readable)
    assert nobody["status"] == "WARN" and "audit" in nobody["detail"] and nobody["fix"]


def test_a_recorder_without_root_says_the_exec_trail_is_not_had(tmp_path: Path) -> None:
    """Not root: no audit trail; the session records say which trail there is and why, and the
    session is recorded all the same."""
    need_root()
    need_binary("setpriv")
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="ws-nobody-"))
    shared.chmod(0o777)
    server = HookServer(shared / "hook.sock").start()
    try:
        (shared / "hook.sock").chmod(0o777)
        repo = Path(__file__).resolve().parent.parent
        subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(repo / ".venv" / "bin" / "python"),
             "-m", "agent.cli", "websh", "--queue", str(shared / "q.db"), "--socket", str(shared / "hook.sock"),
             "--session-id", "nobody-1", "--no-login", "--", "/bin/sh", "-c", "/bin/echo hi-nobody; exit 0"],
            cwd=str(repo), env={"PATH": "/usr/bin:/bin", "HOME": str(shared), "PYTHONPATH": str(repo)},
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        last = wait_until(lambda: closed(server, "nobody-1"), 20, what="session closed event")
    finally:
        server.stop()
        shutil.rmtree(shared)
    validate_data("websh_session", last)
    trail = last["exec_trail"]
    assert trail["mode"] != "kernel" and "audit" in trail["reason"]
