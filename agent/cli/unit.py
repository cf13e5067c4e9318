"""The agent's systemd unit as ``doctor`` and ``setup`` see it: its name and systemctl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

UNIT = "alpacon-agent.service"
#: present when systemd is the running init (the check sd_booted() makes)
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


def systemctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str] | None:
    """Run ``systemctl ARGS`` and return its result; None when systemd is not running here."""
    path = shutil.which("systemctl")
    if not SYSTEMD_RUN_DIR.is_dir() or path is None:
        return None
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, check=False)


def service_state() -> str | None:
    """``active``/``inactive``/… from systemctl, or None when systemd is not running."""
    res = systemctl("is-active", UNIT, timeout=15)
    if res is None:
        return None
    return res.stdout.strip() or "unknown"
