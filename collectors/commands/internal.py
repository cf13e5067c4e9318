"""The agent's own jobs, recorded as ``command`` events with ``shell: internal``.

:func:`record_internal` records one; :func:`run_internal` runs one of the agent's programs and
records it. External runners report their own lifecycle events over the hook API's ``emit`` op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal

from agent.collector import CollectorContext
from agent.events import format_ts, make_event, new_id, stable_id
from collectors.commands.runner import OutputCap
from collectors.commands.store import CommandRecord, command_data


async def record_internal(
    ctx: CollectorContext,
    line: str,
    *,
    status: str = "success",
    exit_code: int | None = None,
    result: str | None = None,
    reason: str | None = None,
    started_at: str | None = None,
    finished_at: str | None = None,
    command_id: str | None = None,
    user: str | None = None,
) -> str:
    """Record one of the agent's own jobs as a ``shell: internal`` command; returns its id."""
    cid = command_id or new_id("int")
    r = CommandRecord(cid, line, user or pwd.getpwuid(os.geteuid()).pw_name, "alpacon-agent", 0.0, False,
                      started_at=started_at)
    ts = finished_at or format_ts()
    if status in ("success", "failed") and finished_at is None:
        finished_at = ts
    data = command_data(r, status, shell="internal", exit_code=exit_code, result=result, reason=reason,
                        finished_at=finished_at)
    await ctx.emit([make_event("command", data, ts=ts, id=stable_id("cmd", cid, status))])
    return cid


async def run_internal(ctx: CollectorContext, argv: list[str], timeout_s: float = 300.0,
                       max_output_bytes: int = 65_536) -> int | None:
    """Run one of the agent's own programs and record it (``shell: internal``); returns its exit code."""
    import shlex

    started = format_ts()
    cap = OutputCap(max_output_bytes)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while chunk := await proc.stdout.read(65536):
                    cap.feed(chunk)
                rc = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            await record_internal(ctx, shlex.join(argv), status="failed", result=cap.text(),
                                  reason=f"killed after its timeout of {timeout_s:g}s", started_at=started)
            return None
    except OSError as exc:
        await record_internal(ctx, shlex.join(argv), status="failed", reason=f"could not start: {exc}",
                              started_at=started)
        return None
    await record_internal(ctx, shlex.join(argv), status="success" if rc == 0 else "failed", exit_code=rc,
                          result=cap.text(), started_at=started,
                          reason=None if rc == 0 else f"exit code {rc}")
    return rc
