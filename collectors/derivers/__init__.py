"""Derivers: audit events made from log lines (``auth``: user activity; ``sftp``, ``ftp``: WebFTP transfers).

They are not sources: the journald and syslog-file collectors run them on the lines they read
(see ``collectors.derivers.base``). :func:`build_derivers` makes the enabled ones from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.typing import Deriver
from collectors.derivers.base import OriginFilter, Witness, auth_origin

if TYPE_CHECKING:
    from agent.config import AgentConfig


def build_derivers(cfg: AgentConfig, counter: Callable[..., Any] | None = None) -> list[Deriver]:
    """The enabled derivers, each limited to the auth origin chosen by the config, sharing one
    :class:`~collectors.derivers.base.Witness` (the rule table of this system's executables;
    ``counter`` counts the lines whose sender does not fit, ``forged_lines``)."""
    origin = auth_origin(cfg)
    auth = cfg.collectors.auth
    accept = OriginFilter(origin, auth.paths, named="paths" in auth.model_fields_set,
                          always=cfg.collectors.ftp.paths if cfg.collectors.ftp.enabled else ())
    witness = Witness(counter=counter)
    out: list[Deriver] = []
    if cfg.collectors.auth.enabled:
        from collectors.derivers.auth import AuthDeriver

        out.append(AuthDeriver(accept=accept, ignore_services=cfg.collectors.auth.ignore_pam_services,
                               witness=witness, counter=counter))
    if cfg.collectors.sftp.enabled:
        from collectors.derivers.sftp import SftpDeriver

        out.append(SftpDeriver(accept=accept, max_sessions=cfg.collectors.sftp.max_sessions,
                               witness=witness, counter=counter))
    if cfg.collectors.ftp.enabled:
        from collectors.derivers.ftp import FtpTransferDeriver

        out.append(FtpTransferDeriver(accept=accept, witness=witness))
    return out
