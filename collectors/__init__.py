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
        from collectors.syslog import SyslogFileCollector

        out.append(SyslogFileCollector(c.syslog, ctx))
    if c.metrics.enabled:
        from collectors.metrics import MetricsCollector

        out.append(MetricsCollector(c.metrics, ctx))
    if c.commands.enabled:
        from collectors.commands import CommandsCollector

        out.append(CommandsCollector(c.commands, ctx))
    return out
