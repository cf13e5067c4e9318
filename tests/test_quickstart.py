"""The README's first command brings up receiver and agent, as root with or without sudo installed and
for a user with sudo; an emitted event arrives. Without root and without sudo it refuses clearly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, need_binary, need_root, path_without, throwaway_user, wait_until

ROOT = Path(__file__).resolve().parents[1]


def first_command() -> str:
    """The first command of the README's first code block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README has no sh code block"
    return block.group(1).splitlines()[0].split("#")[0].strip()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="quickstart-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bring_up_and_emit(argv: list[str], cwd: Path, tmp: Path, env: dict[str, str]) -> str:
    """Run the quickstart (``argv``, demo options added) in ``cwd``; once the agent is healthy, emit an
    event and wait for it in the receiver. Returns the quickstart's output."""
    port, mport = free_port(), free_port()
    demo_dir = tmp / "demo"
    log_path = tmp / "quickstart.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [*argv, "--dir", str(demo_dir), "--port", str(port), "--metrics-port", str(mport)],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, 600, interval=0.5, what="quickstart up")
        r = subprocess.run(
            [str(cwd / ".venv" / "bin" / "alpacon-agent"), "emit", "--config", str(demo_dir / "agent.yaml"),
             "user_activity", "--json", json.dumps({"user": "quick", "action": "login", "result": 200})],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        ev_id = json.loads(r.stdout)["id"]
        token = (demo_dir / "token").read_text().strip()

        def arrived() -> bool:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/user-activity",
                                         headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return any(i["id"] == ev_id for i in json.loads(resp.read())["items"])

        wait_until(arrived, 60, what="event in the receiver")
    finally:
        # sudo runs its command in a session of its own (use_pty) and relays SIGTERM to it
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    text = log_path.read_text()
    assert "demo: receiver http://127.0.0.1" in text, text[-3000:]
    return text


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, **extra}


class TestQuickstart:
    def test_first_command_needs_no_sudo(self) -> None:
        """The README's first command is the script itself: it must work where sudo is not installed."""
        assert first_command() == "./scripts/quickstart.sh"

    @pytest.mark.slow
    def test_fresh_clone_quickstart(self, tmp_path: Path) -> None:
        """The first command in a fresh clone: receiver and agent up, `emit` lands in the receiver."""
        need_binary("git")
        need_root()
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        # the working tree's uncommitted files are not in a clone; the test is of what is committed
        bring_up_and_emit(first_command().split(), clone, tmp_path, clean_env())
        assert (clone / ".venv" / "bin" / "alpacon-agent").exists()  # the clone made its own .venv

    def test_root_without_sudo_installed(self, tmp_path: Path) -> None:
        """As root on a PATH with no sudo (a container, a minimal VM) the first command runs."""
        need_root()
        path = path_without(tmp_path, "sudo")
        assert shutil.which("sudo", path=path) is None and shutil.which("bash", path=path)
        bring_up_and_emit(first_command().split(), ROOT, tmp_path, clean_env(PATH=path))

    def test_user_without_root_or_sudo_is_told_how(self, tmp_path: Path, open_dir: Path) -> None:
        """Neither root nor sudo: a clear refusal naming the fix, nothing started."""
        runuser = need_binary("runuser")
        path = path_without(open_dir, "sudo")
        with throwaway_user("aqs") as user:
            r = subprocess.run([runuser, "-u", user, "--", "env", f"PATH={path}", str(ROOT / first_command())],
                               capture_output=True, text=True, timeout=60, cwd=open_dir)
        assert r.returncode == 1
        assert "needs root, and sudo is not installed: run it as root" in r.stderr
        assert "Traceback" not in r.stderr and "command not found" not in r.stderr

    def test_user_with_sudo_becomes_root(self, tmp_path: Path) -> None:
        """A user allowed to sudo: the script starts itself again under sudo and comes up."""
        runuser = need_binary("runuser")
        need_binary("sudo")
        with throwaway_user("aqs") as user:
            rule = Path(f"/etc/sudoers.d/{user}")
            rule.write_text(f"{user} ALL=(root) NOPASSWD: {ROOT / 'scripts' / 'quickstart.sh'}\n")
            rule.chmod(0o440)
            try:
                text = bring_up_and_emit([runuser, "-u", user, "--", "./scripts/quickstart.sh"], ROOT, tmp_path,
                                         clean_env())
            finally:
                rule.unlink()
        assert "needs root" not in text
