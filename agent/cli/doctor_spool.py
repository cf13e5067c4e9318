"""``doctor``'s checks of the spool: the state directory, the database's health, what is pending and
dead, and the damaged spools the agent moved aside at start."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

from agent.cli.checks import CheckResult, fail, ok, warn
from agent.config import AgentConfig
from agent.spool import Spool


def spool_path(cfg: AgentConfig) -> Path:
    return Path(cfg.state_dir) / Spool.FILENAME


def check_spool(cfg: AgentConfig) -> list[CheckResult]:
    """The state dir is private, the spool database is intact; pending and dead batches."""
    out: list[CheckResult] = []
    state = Path(cfg.state_dir)
    if not state.is_dir():
        return [warn("spool", f"{state} does not exist yet (created when the agent starts)",
                     "systemctl start alpacon-agent")]
    st = state.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        out.append(warn("state-dir", f"{state} has mode {stat.S_IMODE(st.st_mode):04o}: "
                        "spooled events are readable by other users", f"chmod 700 {state}"))
    free = shutil.disk_usage(state).free
    if free < cfg.spool.max_bytes:
        out.append(warn("disk", f"{free // 1048576} MiB free under {state}, less than "
                        f"spool.max_bytes ({cfg.spool.max_bytes // 1048576} MiB)",
                        "free disk space or lower spool.max_bytes"))
    path = spool_path(cfg)
    if not path.exists():
        return [ok("spool", f"{path} not created yet (nothing spooled)")] + out
    try:
        check, stats = Spool.read_stats(path, cfg.spool.max_bytes)
    except sqlite3.Error as exc:
        return [fail("spool", f"{path} is not a readable SQLite spool: {exc}",
                     "systemctl restart alpacon-agent (at start it moves a damaged spool aside and keeps "
                     "what can be read)")] + out
    if check != ["ok"]:
        first = "; ".join(check[:3])
        return [fail("spool", f"{path} is damaged: {first}",
                     "systemctl restart alpacon-agent (at start it moves a damaged spool aside and keeps "
                     "what can be read)")] + out
    age = f", oldest {max(0.0, stats.oldest_age_s):.0f} s old" if stats.oldest_age_s is not None else ""
    out.insert(0, ok("spool", f"{path} intact, {stats.batches} batches pending ({stats.bytes} bytes "
                     f"of {cfg.spool.max_bytes}{age})"))
    if stats.dead_letters:
        out.append(warn("dead-letters", f"{stats.dead_letters} batches refused by the backend",
                        "see: alpacon-agent spool; after fixing the cause: "
                        "alpacon-agent spool requeue-dead"))
    if stats.bytes > 0.9 * cfg.spool.max_bytes:
        out.append(warn("spool-full", "the spool is over 90% full: the backend is not keeping up",
                        "check the backend check above"))
    return out


def check_spool_recovery(cfg: AgentConfig) -> list[CheckResult]:
    """Damaged spools the agent moved aside at start, with what the last recovery salvaged and lost."""
    path = spool_path(cfg)
    kept = sorted(p for p in path.parent.glob(f"{path.name}.corrupt-*") if not p.name.endswith(("-wal", "-shm")))
    if not kept:
        return []
    last: dict[str, Any] = {}
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            row = db.execute("SELECT value FROM meta WHERE key='last_recovery'").fetchone()
            last = json.loads(row[0]) if row else {}
    detail = f"{len(kept)} damaged spool file(s) moved aside at start: {', '.join(str(p) for p in kept)}"
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(last.get("at", 0))))
        lost = last.get("batches_lost")
        detail += (f"; the last, at {when} ({last.get('problem', '?')}): {last.get('batches', 0)} batches "
                   f"({last.get('events', 0)} events) salvaged, {'an unknown number of' if lost is None else lost} "
                   f"lost{', sources re-read from their oldest data' if last.get('resume_from_oldest') else ''}")
    return [warn("spool-recovered", detail, f"check the disk (dmesg, smartctl); remove {kept[-1]}* once "
                 "no longer needed")]
