"""One module per source. ``build_collectors`` turns the config into collector instances."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.collector import Collector, CollectorContext
    from agent.config import AgentConfig


def build_collectors(cfg: AgentConfig, ctx: CollectorContext) -> list[Collector]:
    """The enabled collectors, in a stable order. Each import is lazy so that a missing
    optional library only matters when its collector is enabled."""
    out: list[Collector] = []
    c = cfg.collectors
    if c.journald.enabled:
        from collectors.journald import JournaldCollector

        out.append(JournaldCollector(c.journald, ctx))
    if c.syslog.enabled:
        from collectors.syslog.collector import SyslogFileCollector

        out.append(SyslogFileCollector(c.syslog, ctx))
    # the auth log, when the audit derivers read it from a file rather than the journal
    from collectors.derivers.base import auth_file_paths

    auth_paths = [p for p in auth_file_paths(cfg) if not (c.syslog.enabled and p in c.syslog.paths)]
    if auth_paths:
        from collectors.syslog.collector import SyslogFileCollector

        authlog = SyslogFileCollector(c.syslog.model_copy(update={"paths": auth_paths, "enabled": True}), ctx)
        authlog.name = "authlog"  # type: ignore[misc]
        authlog.source = "authlog"
        out.append(authlog)
    if c.metrics.enabled:
        from collectors.metrics import MetricsCollector

        out.append(MetricsCollector(c.metrics, ctx))
    if c.commands.enabled:
        from collectors.commands.runner import CommandsCollector

        out.append(CommandsCollector(c.commands, ctx))
    return out
