"""Supervision of the agent's long-lived tasks: none may end without a word.

:class:`Supervisor` runs each task (the shipper, housekeeping …) from a factory. An unexpected
end — an exception, or a plain return of a loop meant to run for ever — is logged on one line,
counted (``alpacon_agent_task_restarts_total{task}``) and followed by a restart after an
exponential backoff with jitter (tenacity's schedule). Some failures cannot be mended by a
restart in process: a task crash-looping (``max_failures`` within ``window_s``) or an error the
caller calls fatal (a corrupt spool, whose repair is the start-up check) make the supervisor
call ``on_fatal(reason)``, and the service exits non-zero so that systemd starts it afresh.

While a task is failing, :meth:`Supervisor.problems` names it and why, for ``/healthz``, the
watchdog and ``STATUS=``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from tenacity import RetryCallState, wait_exponential_jitter

from agent.metrics import AgentMetrics

log = structlog.get_logger("supervisor")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]


@dataclass
class _TaskState:
    name: str
    failures: deque[float] = field(default_factory=deque)
    attempt: int = 0
    problem: str | None = None
    started: float = field(default_factory=time.monotonic)
    backing_off: bool = False


class Supervisor:
    """Runs tasks for ever, restarting them with backoff; gives up loudly when a restart cannot help."""

    def __init__(
        self,
        metrics: AgentMetrics,
        on_fatal: Callable[[str], None],
        *,
        is_fatal: Callable[[BaseException], bool] = lambda exc: False,
        max_failures: int = 5,
        window_s: float = 300.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.is_fatal = is_fatal
        self.max_failures = max_failures
        self.window_s = window_s
        self.healthy_after_s = healthy_after_s
        self._wait = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s)
        self._states: dict[str, _TaskState] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``factory()`` as the task ``name``, supervised; the task to cancel on stop."""
        state = self._states[name] = _TaskState(name)
        task = asyncio.create_task(self._supervise(state, factory), name=f"supervised:{name}")
        self.tasks.append(task)
        return task

    def problems(self) -> dict[str, str]:
        """The tasks failing now (ended unexpectedly and not yet running well again) and why."""
        now = time.monotonic()
        for s in self._states.values():
            if s.problem is not None and not s.backing_off and now - s.started >= self.healthy_after_s:
                s.problem = None  # it has run well again since its last restart
        return {s.name: s.problem for s in self._states.values() if s.problem is not None}

    async def stop(self) -> None:
        """Cancel every supervised task and wait for them."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def _supervise(self, state: _TaskState, factory: Callable[[], Awaitable[None]]) -> None:
        while True:
            state.started = time.monotonic()
            try:
                await factory()
                reason = "ended although it should run until the agent stops"
                exc: BaseException | None = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - every unexpected end is handled here
                reason, exc = _one_line(e), e
            if self._failed(state, reason, exc):
                return
            delay = self._wait(self._retry_state(state.attempt))
            log.error("task failed; restarting it", task=state.name, reason=reason, failures=len(state.failures),
                      restart_in_s=round(delay, 2))
            state.problem = f"{reason} (failed {len(state.failures)} times, restarting)"
            state.backing_off = True
            try:
                await asyncio.sleep(delay)
            finally:
                state.backing_off = False

    def _failed(self, state: _TaskState, reason: str, exc: BaseException | None) -> bool:
        """Count a failure; True when the supervisor gave up on the task (on_fatal was called)."""
        now = time.monotonic()
        if now - state.started >= self.healthy_after_s:
            state.attempt = 0  # it had run well: the backoff starts over
            state.problem = None
        state.attempt += 1
        state.failures.append(now)
        while state.failures and now - state.failures[0] > self.window_s:
            state.failures.popleft()
        self.metrics.task_restarts.labels(state.name).inc()
        fatal = exc is not None and self.is_fatal(exc)
        if fatal or len(state.failures) >= self.max_failures:
            why = "a restart in process cannot mend it" if fatal else (
                f"it failed {len(state.failures)} times in {self.window_s:.0f} s")
            state.problem = f"{reason} ({why})"
            log.error("task failed and cannot be restarted in process", task=state.name, reason=reason, why=why)
            self.on_fatal(f"{state.name}: {reason}")
            return True
        return False

    @staticmethod
    def _retry_state(attempt: int) -> RetryCallState:
        rs = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        rs.attempt_number = attempt
        return rs
