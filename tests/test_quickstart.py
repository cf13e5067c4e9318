"""The README's first command on a fresh clone brings up receiver and agent; an emitted event arrives."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port, need_binary, wait_until

ROOT = Path(__file__).resolve().parents[1]


def first_command() -> str:
    """The first command of the README's first code block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README has no sh code block"
    return block.group(1).splitlines()[0].split("#")[0].strip()


class TestQuickstart:
    @pytest.mark.slow
    def test_fresh_clone_quickstart(self, tmp_path):
        """`sudo ./scripts/quickstart.sh` in a fresh clone: receiver and agent up, `emit` lands in the receiver."""
        need_binary("git")
        cmd = first_command()
        assert cmd == "sudo ./scripts/quickstart.sh"
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        # the working tree's uncommitted files are not in a clone; the test is of what is committed
        port, mport = free_port(), free_port()
        demo_dir = tmp_path / "demo"
        argv = cmd.split()[1:] if cmd.startswith("sudo ") and os.geteuid() == 0 else cmd.split()
        log = open(tmp_path / "quickstart.log", "w")
        proc = subprocess.Popen(
            [*argv, "--dir", str(demo_dir), "--port", str(port), "--metrics-port", str(mport)],
            cwd=clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        )
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError((tmp_path / "quickstart.log").read_text()[-3000:])
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=2) as r:
                        return r.status == 200
                except OSError:
                    return False

            wait_until(ready, 600, interval=0.5, what="quickstart up")
            cli = clone / ".venv" / "bin" / "alpacon-agent"
            r = subprocess.run(
                [str(cli), "emit", "--config", str(demo_dir / "agent.yaml"), "user_activity",
                 "--json", json.dumps({"user": "quick", "action": "login", "result": 200})],
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
            text = (tmp_path / "quickstart.log").read_text()
            assert "demo: receiver http://127.0.0.1" in text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        assert sys.executable  # the clone made its own .venv
        assert (clone / ".venv" / "bin" / "alpacon-agent").exists()
