"""One module per source. ``build_collectors`` turns the config into collector instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    # the auth log, when the audit derivers read it from a file rather than the journal, and the
    # FTP servers' transfer logs: file sources of their own, each from its own start_at
    from collectors.derivers.base import auth_file_paths, ftp_file_paths

    taken = set(c.syslog.paths) if c.syslog.enabled else set()
    auth_paths = [p for p in auth_file_paths(cfg) if p not in taken]
    ftp_paths = [p for p in ftp_file_paths(cfg) if p not in taken and p not in auth_paths]
    sources = (("authlog", auth_paths, c.auth.start_at, c.syslog.ftp_times), ("ftplog", ftp_paths, c.ftp.start_at,
                                                                                 c.ftp.times))
    for name, paths, start_at, ftp_times in sources:
        if paths:
            from collectors.syslog.collector import SyslogFileCollector

            files = SyslogFileCollector(c.syslog.model_copy(
                update={"paths": paths, "enabled": True, "start_at": start_at, "ftp_times": ftp_times}), ctx)
            files.name = name  # type: ignore[misc]  # name is a ClassVar; each extra file source gets its own
            files.source = name
            out.append(files)
    if c.metrics.enabled:
        from collectors.metrics import MetricsCollector

        out.append(MetricsCollector(c.metrics, ctx))
    if c.commands.enabled:
        from collectors.commands.runner import CommandsCollector

        out.append(CommandsCollector(c.commands, ctx))
    return out


def collectors_basis(cfg: AgentConfig) -> tuple[Any, ...]:
    """What the collectors are built from (see ``build_collectors``): their settings, the server
    name, the hook server they register with and the auth and FTP files present. A reload starts
    them again only when this changed."""
    from collectors.derivers.base import auth_file_paths, ftp_file_paths

    return (cfg.collectors, cfg.server, cfg.hook, tuple(auth_file_paths(cfg)), tuple(ftp_file_paths(cfg)))
