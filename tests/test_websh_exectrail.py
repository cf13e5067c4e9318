"""The kernel's exec trail of a session's process tree, against the real kernel (root).

Each test forks a real program tree the way the recorder does (the child enters its own audit
session before it execs) and reads what the kernel told the trail.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.websh import auditlink
from collectors.websh.exectrail import ExecTrail
from collectors.websh.programs import Program
from tests.support import need, need_binary, need_root

USER = "wsexectrail"


def run_followed(trail: ExecTrail, argv: list[str], timeout: float = 60.0) -> int:
    """Fork ``argv`` as the session's tree, follow it to its end and until every exec is known."""
    trail.prepare()
    pid = os.fork()
    if pid == 0:
        try:
            trail.child_setup(0)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    trail.follow(pid)
    deadline = time.monotonic() + timeout
    status: int | None = None
    while status is None:
        assert time.monotonic() < deadline, "the program tree did not end"
        select.select(trail.fds(), [], [], 0.05)
        trail.pump()
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
    end = time.monotonic_ns()
    while not trail.settled(end):
        assert time.monotonic() < deadline, "the kernel's records did not all arrive"
        select.select(trail.fds(), [], [], 0.05)
        trail.pump()
    trail.pump()
    return status


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[ExecTrail]:
    need_root()
    t = ExecTrail(state_dir=str(tmp_path / "run"))
    try:
        yield t
    finally:
        t.close()


def argvs(trail: ExecTrail) -> list[list[str]]:
    return [p.argv for p in trail.programs if p.argv is not None]


def test_every_short_program_of_a_2000_exec_loop_is_known_with_argv_and_status(trail: ExecTrail) -> None:
    run_followed(trail, ["bash", "-c", "for i in $(seq 1000); do /bin/true; /bin/echo n$i; done >/dev/null"])
    assert trail.mode == "kernel", trail.reason
    progs = list(trail.programs)
    trues = [p for p in progs if p.argv == ["/bin/true"]]
    echoes = {p.argv[1] for p in progs if p.argv and p.argv[0] == "/bin/echo" and len(p.argv) == 2}
    share = (len(trues) + len(echoes)) / 2000
    print(f"exec trail: {share:.4f} of 2000 short execs recorded with argv")
    assert len(trues) == 1000 and echoes == {f"n{i}" for i in range(1, 1001)}
    assert all(p.argv_from == "kernel" and p.exit_status == 0 and p.duration_ms is not None for p in trues)
    assert trail.argv_missing == 0 and trail.escaped == 0


def test_exit_status_cwd_and_parent_come_from_the_kernel(trail: ExecTrail, tmp_path: Path) -> None:
    status = run_followed(trail, ["bash", "-c", f"cd {tmp_path} && /bin/sh -c 'exit 7'; /bin/sleep 0.2; exit 3"])
    assert status == 3
    sh = next(p for p in trail.programs if p.argv == ["/bin/sh", "-c", "exit 7"])
    sleep = next(p for p in trail.programs if p.argv == ["/bin/sleep", "0.2"])
    assert sh.exit_status == 7 and sh.cwd == str(tmp_path) and sh.uid == 0
    assert sleep.exit_status == 0 and sleep.duration_ms is not None and sleep.duration_ms >= 150
    root = trail.programs[0]
    assert root.argv is not None and root.argv[0] == "bash" and root.claimed
    assert sh.ppid == root.pid


def test_programs_inside_a_nested_pty_are_in_the_trail(trail: ExecTrail) -> None:
    need_binary("script")
    run_followed(trail, ["script", "-q", "/dev/null", "-c", "/bin/echo inner-x; /bin/false"])
    inner = next(p for p in trail.programs if p.argv == ["/bin/echo", "inner-x"])
    false = next(p for p in trail.programs if p.argv == ["/bin/false"])
    assert inner.exit_status == 0 and false.exit_status == 1


@pytest.fixture
def other_user() -> Iterator[tuple[str, int]]:
    need_root()
    need_binary("useradd")
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True, capture_output=True)
    import pwd

    try:
        yield USER, pwd.getpwnam(USER).pw_uid
    finally:
        subprocess.run(["userdel", "-r", USER], capture_output=True)


def test_su_and_setpriv_programs_carry_the_uid_they_ran_as(trail: ExecTrail, other_user: tuple[str, int]) -> None:
    name, uid = other_user
    need_binary("su")
    run_followed(trail, ["bash", "-c", f"su -s /bin/sh {name} -c '/bin/echo as-other; /usr/bin/id -u'"])
    echo = next(p for p in trail.programs if p.argv == ["/bin/echo", "as-other"])
    assert echo.uid == uid and echo.to_data(str)["user"] == name
    su = next(p for p in trail.programs if p.argv and p.argv[0] == "su")
    assert su.uid == 0


def test_argv_the_user_controls_is_kept_exactly_and_bounded(trail: ExecTrail) -> None:
    odd = 'a "quoted" word\nnew line\tand tab \x1b[31m'
    big = "x" * 50_000
    script = f"/bin/echo {subprocess.list2cmdline([odd])} $'\\xff\\xfe' >/dev/null; /bin/echo {big} >/dev/null"
    run_followed(trail, ["bash", "-c", script])
    weird = next(p for p in trail.programs if p.argv and p.argv[0] == "/bin/echo" and "quoted" in "".join(p.argv))
    assert weird.argv == ["/bin/echo", odd, "\\xff\\xfe"]
    long = next(p for p in trail.programs if p.argv and p.argv[0] == "/bin/echo" and p.truncated)
    assert sum(len(a) for a in long.argv or []) < 10_000 and "…[truncated" in (long.argv or [""])[-1]


def test_only_the_sessions_own_tree_is_followed(trail: ExecTrail) -> None:
    outsider = subprocess.Popen(["bash", "-c", "for i in $(seq 50); do /bin/echo outsider-$i; done >/dev/null"])
    run_followed(trail, ["bash", "-c", "for i in $(seq 50); do /bin/echo insider-$i; done >/dev/null"])
    outsider.wait()
    texts = [" ".join(a) for a in argvs(trail) if a[0] == "/bin/echo"]
    assert sum("insider-" in t for t in texts) == 50
    assert not any("outsider-" in t for t in texts)


def test_a_process_that_leaves_the_audit_session_is_still_seen_and_counted(trail: ExecTrail) -> None:
    # root inside the session gives itself another audit session: the connector still sees the
    # exec, its argv comes from /proc, and the trail counts the escape
    code = "open('/proc/self/loginuid','w').write('0'); import os; os.execv('/bin/sleep', ['/bin/sleep', '0.5'])"
    run_followed(trail, [sys.executable, "-c", code], timeout=30)
    sleep = next(p for p in trail.programs if p.argv == ["/bin/sleep", "0.5"])
    assert sleep.argv_from == "proc" and trail.escaped >= 1


def test_rules_are_removed_and_audit_state_restored(tmp_path: Path) -> None:
    need_root()
    ctl = auditlink.AuditControl()
    try:
        before, _ = ctl.status()
        trail = ExecTrail(state_dir=str(tmp_path / "run"))
        run_followed(trail, ["/bin/true"])
        assert trail.session is not None
        ours = [r for r in ctl.rules() if r.key == auditlink.RULE_KEY and r.session == trail.session]
        assert len(ours) == 2  # 64-bit and 32-bit execs
        trail.close()
        assert not [r for r in ctl.rules() if r.session == trail.session]
        assert ctl.status()[0] == before
    finally:
        ctl.close()


def test_a_dead_recorders_rule_is_removed_by_the_next(tmp_path: Path) -> None:
    need_root()
    ctl = auditlink.AuditControl()
    try:
        state = tmp_path / "run"
        stale = auditlink.AuditRules(state)
        stale.enable()
        dead_session = max(auditlink.live_sessions() - {auditlink.UNSET_SESSION}, default=0) + 100_000
        stale.add(dead_session)  # as left by a recorder killed with SIGKILL
        assert any(r.session == dead_session for r in ctl.rules())
        trail = ExecTrail(state_dir=str(state))
        run_followed(trail, ["/bin/true"])
        assert not any(r.session == dead_session for r in ctl.rules())
        trail.close()
        assert not [r for r in ctl.rules() if r.key == auditlink.RULE_KEY]
    finally:
        ctl.close()


def test_without_root_the_trail_says_why_it_has_no_kernel_argv(tmp_path: Path) -> None:
    need_root()
    need(os.path.exists("/usr/bin/setpriv"), "setpriv")
    code = (
        "from collectors.websh.exectrail import ExecTrail, availability\n"
        "t = ExecTrail(); t.prepare(); print(availability()); print(t.reason)\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=str(Path(__file__).parent.parent), check=True,
    ).stdout
    # the connector may be open to everyone (Linux >= 6.6); the audit trail, with argv, is not
    mode, reason = out.splitlines()[0], out.splitlines()[1]
    assert not mode.startswith("('kernel'") and "audit" in reason
    assert "Operation not permitted" in reason or "Permission denied" in reason


def test_program_records_redact_their_argv() -> None:
    p = Program(1, 0, 0, 0.0, argv=["mysql", "--password=hunter2"], uid=0, argv_from="kernel")
    data = p.to_data(lambda s: s.replace("hunter2", "[REDACTED]"))
    assert data["argv"] == ["mysql", "--password=[REDACTED]"] and data["user"] == "root"


def _prog(*argv: str, ppid: int = 10, status: int | None = 0) -> Program:
    return Program(99, ppid, 1_000_000, 0.0, argv=list(argv), exe=f"/usr/bin/{os.path.basename(argv[0])}",
                   uid=0, end_ns=3_000_000, exit_status=status, argv_from="kernel")


def test_marks_that_contradict_the_typed_keys_are_flagged_and_lose() -> None:
    from collectors.websh.evidence import weigh

    v = weigh("ls", "rm -f /tmp/x", True, [_prog("rm", "-f", "/tmp/x")])
    assert v.command == "rm -f /tmp/x" and v.tampered and "'ls'" in v.tampered
    assert v.witnesses == ["kernel", "input"]


def test_marks_that_contradict_the_kernel_are_flagged_but_aliases_are_not() -> None:
    from collectors.websh.evidence import weigh

    v = weigh("ls", None, False, [_prog("cat", "/etc/passwd")])
    assert v.tampered and "cat" in v.tampered
    alias = weigh("ll", None, False, [_prog("ls", "-l")])
    assert alias.tampered is None and alias.witnesses == ["marks"]
    ok = weigh("ls -l", "ls -l", True, [_prog("ls", "-l")])
    assert ok.tampered is None and ok.witnesses == ["kernel", "marks", "input"]


def test_kernel_exit_is_the_last_direct_programs() -> None:
    from collectors.websh.evidence import kernel_exit

    a, b = _prog("grep", "x", status=1), _prog("sort", status=0)
    b.start_ns, b.end_ns = 2_000_000, 9_000_000
    assert kernel_exit([a, b], 10) == (0, 8)


def test_producer_text_over_the_schemas_caps_is_clipped_with_a_marker() -> None:
    from agent.schema import validate_data
    from collectors.websh.clip import clip_data

    data = {"session_id": "s" * 500, "username": "u", "started_at": "2026-01-01T00:00:00.000Z", "state": "open",
            "browser": "B" * 20_000, "operator": "o" * 300, "remote_ip": "1" * 100, "groupname": None}
    cut = clip_data("websh_session", data)
    assert set(cut) == {"session_id", "browser", "operator", "remote_ip"}
    assert len(data["browser"]) == 1024 and data["browser"].endswith("…[clipped: 20000 chars]")
    validate_data("websh_session", data)
