"""Derivers: audit events made from log lines (``auth``: user activity; ``sftp``: WebFTP transfers).

They are not sources: the journald and syslog-file collectors run them on the lines they read
(see ``collectors.derivers.base``). :func:`build_derivers` makes the enabled ones from the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.typing import Deriver
from collectors.derivers.base import OriginFilter, auth_origin

if TYPE_CHECKING:
    from agent.config import AgentConfig


def build_derivers(cfg: AgentConfig) -> list[Deriver]:
    """The enabled derivers, each limited to the auth origin chosen by the config."""
    origin = auth_origin(cfg)
    accept = OriginFilter(origin, cfg.collectors.auth.paths)
    out: list[Deriver] = []
    if cfg.collectors.auth.enabled:
        from collectors.derivers.auth import AuthDeriver

        out.append(AuthDeriver(accept=accept, ignore_services=cfg.collectors.auth.ignore_pam_services))
    if cfg.collectors.sftp.enabled:
        from collectors.derivers.sftp import SftpDeriver

        out.append(SftpDeriver(accept=accept, max_sessions=cfg.collectors.sftp.max_sessions))
    return out
