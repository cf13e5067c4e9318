"""The service: wires collectors, pipeline, spool, shipper, hook API and /metrics together,
and speaks to systemd (READY, WATCHDOG, STATUS, RELOADING, STOPPING) through sd_notify.

``Agent.run()`` serves until SIGTERM/SIGINT; SIGHUP reloads the config (an invalid one is
logged and the old one kept). ``Agent.run_once()`` reads what the sources have now, ships
it and returns whether everything was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from aiohttp import web

from agent import __version__
from agent.collector import Collector, CollectorContext
from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.events import new_id, settings_change_event
from agent.health import health_report, sd_notify, status_line, stuck_reason
from agent.hook import HookServer
from agent.metrics import AgentMetrics, make_http_app
from agent.pipeline.batcher import Batcher
from agent.pipeline.processors import build_chain
from agent.shipping.shipper import Shipper
from agent.shipping.sinks import build_sink
from agent.spool import Spool
from agent.spool_recovery import is_corruption, resume_from_oldest
from agent.supervise import Supervisor
from agent.typing import Checkpoint, Emit, EmitItems, Event, Item

log = structlog.get_logger("service")


class Agent:
    """One running agent."""

    exit_code = 0  # what run() returns: 1 after a failure a restart in process cannot mend (_fatal)

    def __init__(self, cfg: AgentConfig, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = AgentMetrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self.spool = Spool(cfg.state_dir, cfg.spool.max_bytes, cfg.spool.synchronous)
        self.metrics.spool_recoveries.inc(self.spool.recovery is not None)
        self.supervisor = Supervisor(self.metrics, self._fatal, is_fatal=is_corruption)
        agent_id = cfg.agent_id or self.spool.meta("agent_id")
        if agent_id is None:
            agent_id = new_id("agent")
            self.spool.set_meta("agent_id", agent_id)
        self.agent_id = agent_id
        self.batcher: Batcher = self._make_batcher(cfg)
        self.shipper: Shipper = self._make_shipper(cfg)
        self.hook: HookServer | None = None
        self.collectors: list[Collector] = []
        self._collector_tasks: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._http_runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._received = 0
        self._rate = 0.0
        self.once = False

    # -- construction ----------------------------------------------------------------------
    def _make_batcher(self, cfg: AgentConfig) -> Batcher:
        b = cfg.batch
        return Batcher(self.spool, self.executor, build_chain(cfg), max_events=b.max_events, max_bytes=b.max_bytes,
                       max_wait_ms=b.max_wait_ms, on_event=self._on_event, on_flush=self._on_flush,
                       pack_level=cfg.sink.gzip_level, on_corrupt_spool=self._fatal)

    def _make_shipper(self, cfg: AgentConfig) -> Shipper:
        info = {"id": self.agent_id, "server": cfg.server, "hostname": socket.gethostname(), "version": __version__}
        return Shipper(self.spool, self.executor, build_sink(cfg, __version__), info, cfg.sink, self.metrics,
                       on_space=self._on_space)

    def _on_event(self, kind: str, outcome: str, source: str, n: int = 1) -> None:
        self.metrics.event_counter(kind, outcome, source).inc(n)
        if outcome == "received":
            self._received += n

    def _on_flush(self, batches: list[Any], evictions: list[Any]) -> None:
        self.metrics.count_evictions(evictions)
        self._update_spool_gauges()
        self.shipper.wake()

    def _on_space(self) -> None:
        self._update_spool_gauges()
        self.batcher.space_freed()

    def _update_spool_gauges(self) -> None:
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _context(self, checkpoints: dict[str, str]) -> CollectorContext:
        from collectors.derivers import build_derivers
        from collectors.derivers.base import line_gate

        derivers = build_derivers(self.cfg, counter=self.metrics.count)
        return CollectorContext(
            server=self.cfg.server,
            emit_fn=self._emit_for("collector"),
            checkpoints=checkpoints,
            once=self.once,
            counter=self.metrics.count,
            state_dir=self.cfg.state_dir,
            derivers=derivers,
            line_gate=line_gate(derivers),
        )

    def _emit_prepared_for(self, name: str) -> EmitItems:
        async def emit_prepared(items: list[Item], checkpoint: Checkpoint | None) -> None:
            await self.batcher.emit_prepared(items, checkpoint, name)

        return emit_prepared

    def _emit_for(self, name: str) -> Emit:
        async def emit(events: list[Event], checkpoint: Checkpoint | None) -> None:
            await self.batcher.emit(events, checkpoint, name)

        return emit

    # -- collectors --------------------------------------------------------------------------
    async def _start_collectors(self) -> None:
        from collectors import build_collectors

        ctx = self._context(await self._db(self.spool.checkpoints))
        lost = self.spool.meta("resume_from_oldest") == "1"  # after a recovery that lost checkpoints
        self.collectors = build_collectors(resume_from_oldest(self.cfg) if lost else self.cfg, ctx)
        for c in self.collectors:
            # each collector its own context, so that its events are counted under its name
            c.ctx = dataclasses.replace(
                ctx,
                emit_fn=self._emit_for(c.name),
                emit_prepared_fn=self._emit_prepared_for(c.name),
                prepared_fn=self.batcher.prepared,
                caught_up_fn=self.batcher.caught_up,
            )
            self._collector_tasks.append(asyncio.create_task(self._run_collector(c), name=f"collector:{c.name}"))
        self._register_hook_ops()

    def _register_hook_ops(self) -> None:
        """Serve the hook API operations the collectors offer (``exec`` of the commands collector)."""
        for c in self.collectors:
            for op, handler in c.hook_ops().items():
                if self.hook is not None:
                    self.hook.register_op(op, handler)
                else:
                    log.warning("commands_no_hook", collector=c.name, op=op,
                                reason=f"hook API disabled: {op} is unavailable")

    async def _run_collector(self, c: Collector) -> None:
        """Run one collector; a crash is logged, counted and the collector restarted after a pause."""
        delay = 1.0
        while True:
            try:
                await c.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one source's failure must not stop the others
                log.exception("collector failed; restarting", collector=c.name, error=str(exc))
                self.metrics.count("collector_crash", collector=c.name)
                if self.once:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                c.ctx.checkpoints = await self._db(self.spool.checkpoints)
            finally:
                with contextlib.suppress(Exception):
                    await c.aclose()

    async def _stop_collectors(self) -> None:
        for t in self._collector_tasks:
            t.cancel()
        await asyncio.gather(*self._collector_tasks, return_exceptions=True)
        self._collector_tasks = []
        self.collectors = []

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- serving -----------------------------------------------------------------------------
    async def _start_http(self) -> None:
        if not self.cfg.http.enabled:
            return
        host, _, port = self.cfg.http.listen.rpartition(":")
        self._http_runner = web.AppRunner(make_http_app(self.metrics, self.health), access_log=None)
        await self._http_runner.setup()
        site = web.TCPSite(self._http_runner, host.strip("[]"), int(port))
        await site.start()

    async def _stop_http(self) -> None:
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None

    async def health(self) -> dict[str, Any]:
        st = await self._db(self.spool.stats)  # on the spool's thread, like every other use
        return health_report(st, self.shipper, agent_id=self.agent_id, server=self.cfg.server,
                             collectors=[c.name for c in self.collectors], stuck=self.stuck())

    def stuck(self) -> str | None:
        return stuck_reason(self.supervisor.problems(), self.shipper.stalled_for())

    def _fatal(self, reason: str) -> None:  # e.g. a corrupt spool: the start-up check mends it
        self.exit_code = 1
        log.critical("the agent exits so that it is started afresh", reason=reason)
        sd_notify(f"STATUS=STOPPING after a failure: {reason[:300]}")
        self._stop.set()

    async def _housekeeping(self) -> None:
        """WATCHDOG=1 from the event loop while shipping makes progress (or systemd restarts a stuck
        agent), STATUS= once a second, gauges."""
        wd_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        wd_every = wd_usec / 2e6 if wd_usec else 5.0
        last_wd = 0.0
        last_count, last_t = self._received, time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_wd >= wd_every and self.stuck() is None:
                sd_notify("WATCHDOG=1")
                last_wd = now
            if now - last_t >= 1.0:
                self._rate = (self._received - last_count) / (now - last_t)
                last_count, last_t = self._received, now
                sd_notify(f"STATUS={status_line(self._rate, self.spool.bytes, self.shipper, self.stuck())}")
                self.metrics.spool_gauges(await self._db(self.spool.stats))
            await asyncio.sleep(min(wd_every, 1.0))

    async def start(self) -> None:
        """Start everything but the collectors' wait for stop."""
        self.hook = HookServer(self.cfg.hook, self.batcher, self.metrics) if self.cfg.hook.enabled else None
        if self.hook is not None:
            await self.hook.start()
        await self._start_http()
        self._tasks.append(self.supervisor.start("shipper", lambda: self.shipper.run()))
        self._tasks.append(self.supervisor.start("housekeeping", self._housekeeping))
        await self._start_collectors()
        log.info(
            "agent started",
            version=__version__,
            server=self.cfg.server,
            sink=self.cfg.sink.type,
            collectors=[c.name for c in self.collectors],
            spool=str(self.spool.path),
        )

    async def shutdown(self) -> None:
        """Stop collectors, flush the batcher into the spool within the bound, stop the rest."""
        await self._stop_collectors()
        if self.hook is not None:
            await self.hook.close()
        try:
            ok = await self.batcher.flush(self.cfg.shutdown.flush_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a broken spool must not turn the stop into a crash
            log.error("could not flush into the spool on stop", error=f"{type(exc).__name__}: {exc}")
            ok = True
        if not ok:
            log.error("could not flush everything into the spool before the deadline (spool full)")
        await self.batcher.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.shipper.sink.close()
        await self._stop_http()
        self.executor.submit(self.spool.close).result()
        self.executor.shutdown(wait=True)

    async def run(self) -> int:
        """Serve until asked to stop. Returns the exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        await self.start()
        sd_notify("READY=1")
        sd_notify(f"STATUS={status_line(self._rate, self.spool.bytes, self.shipper, self.stuck())}")
        while not self._stop.is_set():
            waiters = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._reload_requested.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self._reload_requested.is_set() and not self._stop.is_set():
                self._reload_requested.clear()
                await self.reload()
        sd_notify("STOPPING=1")
        log.info("stopping")
        await self.shutdown()
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    # -- reload ------------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Apply a changed config file; keep the running one when the new one is invalid."""
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            # parsing a large or hostile file takes time: off the event loop (hook answers, shipping)
            new = await asyncio.get_running_loop().run_in_executor(None, load_config, self.config_path)
        except ConfigError as exc:
            log.error("reload refused: the new configuration is invalid; keeping the running one",
                      problems=exc.problems)
            await self._record_settings_change(500, {"error": "; ".join(exc.problems)[:2000]})
            sd_notify("READY=1")
            return False
        old = self.cfg
        changed = sorted(k for k in type(new).model_fields if getattr(new, k) != getattr(old, k))
        if new.state_dir != old.state_dir:
            log.error("state_dir cannot change on reload; restart the service to move it")
            new = new.model_copy(update={"state_dir": old.state_dir})
        # collectors are started again only when something they were built from changed: a
        # restart ends the commands in progress and the derivers' sessions
        from collectors import collectors_basis

        restart = collectors_basis(new) != collectors_basis(old)
        if restart:
            await self._stop_collectors()
        await self.batcher.flush(self.cfg.shutdown.flush_timeout_s)
        self.cfg = new
        self.spool.max_bytes = new.spool.max_bytes
        # the pipeline's processors and limits
        b = new.batch
        self.batcher.chain = build_chain(new)
        self.batcher.max_events = b.max_events
        self.batcher.max_bytes = min(b.max_bytes, new.spool.max_bytes // 4)
        self.batcher.max_wait = b.max_wait_ms / 1000
        # the sink: a new shipper when anything about it changed
        if new.sink != old.sink or new.server != old.server:
            for t in self._tasks:
                if t.get_name() == "supervised:shipper":
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            self._tasks = [t for t in self._tasks if t.get_name() != "supervised:shipper"]
            await self.shipper.sink.close()
            self.shipper = self._make_shipper(new)
            self._tasks.append(self.supervisor.start("shipper", lambda: self.shipper.run()))
        if new.hook != old.hook and self.hook is not None:
            await self.hook.close()
            self.hook = None
        if new.hook.enabled and self.hook is None:
            self.hook = HookServer(new.hook, self.batcher, self.metrics)
            await self.hook.start()
        if new.http != old.http:
            await self._stop_http()
            await self._start_http()
        if restart:
            await self._start_collectors()
        log.info("configuration reloaded", changed=changed,
                 collectors="restarted" if restart else "kept running")
        await self._record_settings_change(200, {"changed": changed, "config": self.config_path or ""})
        sd_notify("READY=1")
        return True

    async def _record_settings_change(self, result: int, details: dict[str, Any]) -> None:
        """The agent's own reloads are user activity of kind ``settings_change``."""
        await self.batcher.emit([settings_change_event(self.agent_id, result, details)], None, "agent")

    # -- one-shot ----------------------------------------------------------------------------
    async def run_once(self, timeout: float) -> tuple[bool, str]:
        """Read the sources to their current end, ship, and report whether all was acknowledged."""
        self.once = True
        await self.start()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*self._collector_tasks, return_exceptions=True)
            await self.batcher.flush(timeout)
            deadline = time.monotonic() + timeout
            while True:
                st = await self._db(self.spool.stats)
                if st.batches == 0:
                    break
                if self.shipper.paused_reason:
                    return False, f"backend refuses the credentials: {self.shipper.paused_reason}"
                if time.monotonic() > deadline:
                    return False, (f"{st.batches} batches not acknowledged after {timeout:.0f}s: "
                                   f"{self.shipper.last_error}")
                self.shipper.wake()
                await asyncio.sleep(0.05)
            if self.shipper.permanent_failures:
                return False, "; ".join(self.shipper.permanent_failures[:5])
            return True, "all events acknowledged"
        except TimeoutError:
            return False, f"sources not read within {timeout:.0f}s"
        finally:
            await self.shutdown()
