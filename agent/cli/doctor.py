"""``alpacon-agent doctor``: check a server's agent installation and say how to fix what is wrong.

Every check (config, token file, journal access, service, hook socket, backend reachability
and TLS, spool health) gives results that are OK, WARN or FAIL, each with how to fix it; the
exit status is 1 when any check failed. ``setup`` (the first-time configuration) is in
:mod:`agent.cli.setup`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.cli.args import add_config_arg
from agent.cli.checks import CheckResult, fail, ok, warn
from agent.cli.doctor_spool import check_spool, check_spool_recovery
from agent.cli.unit import UNIT, service_state
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_config, parse_config
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.cli.args import Subparsers
    from agent.shipping.retry import SendOutcome


# -- individual checks -----------------------------------------------------------------------


def check_config_file(path: str) -> tuple[list[CheckResult], AgentConfig | None]:
    """The config file parses and validates, and only root may change it."""
    results: list[CheckResult] = []
    p = Path(path)
    if not p.exists() and path == DEFAULT_CONFIG_PATH:
        results.append(
            warn("config", f"{path} does not exist; built-in defaults are used",
                 "reinstall the package or run: alpacon-agent setup --url URL --token-file FILE")
        )
        return results, parse_config({}, "<defaults>")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        problems = "; ".join(exc.problems)
        return [fail("config", f"{exc.source}: {problems}",
                     f"edit {path}, then run: alpacon-agent check-config --config {path}")], None
    results.append(ok("config", f"{path} is valid"))
    try:
        st = p.stat()
    except OSError:
        return results, cfg
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0):
        results.append(fail("config-perms", f"{path} is writable by other users "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})", f"chmod go-w {path}"))
    elif st.st_uid not in (0, os.geteuid()):
        results.append(warn("config-perms", f"{path} is owned by uid {st.st_uid}",
                            f"chown root: {path}"))
    return results, cfg


def check_token(cfg: AgentConfig) -> list[CheckResult]:
    """The token file exists, is a non-empty regular file, mode 0600/0400, owned by root."""
    sink = cfg.sink
    if sink.type != "http":
        return [ok("token", f"sink type {sink.type!r} needs no token")]
    fix_setup = "run: alpacon-agent setup --url URL --token-file FILE"
    if not sink.token_file:
        if sink.is_local():
            return [warn("token", f"no sink.token_file; {sink.url} is local", fix_setup)]
        return [fail("token", "no sink.token_file: the backend will refuse every batch", fix_setup)]
    path = sink.token_file
    try:
        st = os.stat(path)
    except OSError as exc:
        return [fail("token", f"{path}: {exc.strerror}", fix_setup)]
    if not stat.S_ISREG(st.st_mode):
        return [fail("token", f"{path} is not a regular file", fix_setup)]
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return [fail("token", f"{path} has mode {mode:04o}: other users can read the token",
                     f"chmod 600 {path}")]
    if st.st_uid != 0:
        return [fail("token", f"{path} is owned by uid {st.st_uid}, not root",
                     f"chown root:root {path}")]
    try:
        token = sink.token()
    except (OSError, ValueError) as exc:
        return [fail("token", f"{path} cannot be read: {exc}", fix_setup)]
    if not token:
        return [fail("token", f"{path} is empty", fix_setup)]
    return [ok("token", f"{path} (mode {mode:04o}, owner root)")]


def check_journal(cfg: AgentConfig) -> list[CheckResult]:
    """The journal opens and has entries this process may read."""
    jcfg = cfg.collectors.journald
    auth_from_journal = cfg.collectors.auth.enabled and cfg.collectors.auth.source != "file"
    if not jcfg.enabled and not auth_from_journal:
        return [ok("journal", "no collector reads the journal")]
    try:
        from systemd import journal
    except ImportError as exc:
        return [fail("journal", f"systemd-python is missing: {exc}",
                     "reinstall the package (the agent's environment is incomplete)")]
    try:
        reader = journal.Reader(path=jcfg.directory) if jcfg.directory else journal.Reader()
    except OSError as exc:
        if jcfg.directory and not os.path.isdir(jcfg.directory):
            return [fail("journal", f"journal directory {jcfg.directory} does not exist",
                         "fix collectors.journald.directory")]
        return [fail("journal", f"cannot open the journal: {exc}",
                     "run the agent (and doctor) as root")]
    try:
        usage = reader.get_usage()
        reader.seek_tail()
        entry = reader.get_previous()
    except OSError as exc:
        return [fail("journal", f"cannot read the journal: {exc}", "run as root")]
    finally:
        reader.close()
    where = jcfg.directory or "system journal"
    if not entry:
        fix = "is systemd-journald running? (systemctl status systemd-journald)"
        if os.geteuid() != 0:
            fix = "run doctor as root: only root sees the whole journal"
        return [warn("journal", f"{where}: no readable entries ({usage} bytes of files)", fix)]
    ts = entry.get("__REALTIME_TIMESTAMP")
    last = f", newest entry {ts:%Y-%m-%d %H:%M:%S}" if ts is not None else ""
    return [ok("journal", f"{where} readable ({usage // 1048576} MiB{last})")]


def check_service(state: str | None) -> list[CheckResult]:
    """The unit is active (``state`` from :func:`agent.cli.unit.service_state`)."""
    if state is None:
        return [warn("service", "systemd is not running here; the service state is unknown",
                     "on a systemd host: systemctl status alpacon-agent")]
    if state == "active":
        return [ok("service", f"{UNIT} is active")]
    return [fail("service", f"{UNIT} is {state}",
                 "systemctl start alpacon-agent; journalctl -u alpacon-agent -n 50")]


def check_hook(cfg: AgentConfig, service: str | None) -> list[CheckResult]:
    """The hook socket exists with the configured mode and accepts a connection."""
    hook = cfg.hook
    if not hook.enabled:
        return [ok("hook", "hook API disabled")]
    path = hook.socket
    try:
        st = os.stat(path)
    except FileNotFoundError:
        detail = f"{path} does not exist: the agent is not running"
        if service == "active":
            return [fail("hook", detail.replace("the agent is not running", "the agent did not "
                                                "create it"), "journalctl -u alpacon-agent -n 50")]
        return [warn("hook", detail, "start it: systemctl start alpacon-agent")]
    except OSError as exc:
        return [fail("hook", f"{path}: {exc.strerror}")]
    if not stat.S_ISSOCK(st.st_mode):
        return [fail("hook", f"{path} is not a socket", f"remove it and restart: rm {path}")]
    out: list[CheckResult] = []
    mode = stat.S_IMODE(st.st_mode)
    if mode != hook.mode:
        out.append(warn("hook-mode", f"{path} has mode {mode:04o}, config says {hook.mode:04o}",
                        "systemctl restart alpacon-agent"))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError as exc:
        out.insert(0, fail("hook", f"{path} refuses connections ({exc.strerror or exc}): "
                           "a stale socket or a hung agent", "systemctl restart alpacon-agent"))
        return out
    finally:
        s.close()
    out.insert(0, ok("hook", f"{path} accepts connections (mode {mode:04o})"))
    return out


TLS_FIX = ("set sink.tls.ca_file to the CA that signed the backend's certificate, "
           "or fix the URL's host name")
#: the probe: a JSON object that is not a batch, so a backend answers 400/422 and stores nothing
PROBE = json.dumps({"schema": 1, "probe": "alpacon-agent doctor"}).encode()


async def _probe(cfg: AgentConfig) -> SendOutcome | None:
    """POST the probe through the agent's own HTTP sink; what came of it, None on a 2xx.

    The agent's sink and not a client of doctor's own: TLS settings, proxy handling (none),
    redirects (never followed), compression and headers are then those the agent ships with,
    so the verdict is about what the agent will meet.
    """
    from agent.shipping.sinks.http import HttpSink

    sink_cfg = cfg.sink.model_copy(update={"timeout_s": min(cfg.sink.timeout_s, 15.0)})
    sink = HttpSink(sink_cfg, __version__)
    try:
        outcome = await sink.send("doctor-probe", PROBE, 0)
    finally:
        await sink.close()
    return None if outcome.status is not None and 200 <= outcome.status < 300 else outcome


def check_fleet_sink(cfg: AgentConfig) -> list[CheckResult]:
    """An OTLP endpoint or NATS servers: reachable, credentials taken, the stream there."""
    from agent.shipping.probe import probe_sink

    return [CheckResult(name, status, detail, fix) for name, status, detail, fix in probe_sink(cfg.sink, __version__)]


def check_backend(cfg: AgentConfig) -> list[CheckResult]:
    """POST a probe that is not a batch: 400/422 means reachable, TLS fine, token accepted."""
    sink = cfg.sink
    if sink.type in ("otlp", "nats"):
        return check_fleet_sink(cfg)
    if sink.type != "http":
        return [ok("backend", f"sink type {sink.type!r}: no backend to reach")]
    url = sink.url
    extra = []
    if url.startswith("http://") and not sink.is_local():
        extra.append(warn("backend-tls", f"{url} is plain http: the token travels unencrypted",
                          "use an https:// URL"))
    tls_note = ""
    if url.startswith("https://") and not sink.tls.verify:
        tls_note = " (certificate NOT verified: sink.tls.verify is false)"
    try:
        err = asyncio.run(_probe(cfg))
    except (OSError, ValueError) as exc:  # token or TLS files unreadable or unusable
        return [fail("backend", f"cannot set up a client for {url}: {exc}"[:300],
                     "check sink.token_file and sink.tls")] + extra
    if err is None:
        return [ok("backend", f"{url} reachable{tls_note}, token accepted (probe stored as 2xx)")] + extra
    status = err.status
    if status is None:
        what = err.reason[:300]
        kind = what.split(":", 1)[0]
        if "SSL" in kind or "Certificate" in kind:
            return [fail("backend", f"TLS with {url} failed: {what}", TLS_FIX)] + extra
        if kind in ("ClientConnectorError", "ClientConnectorDNSError", "TimeoutError",
                    "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError"):
            return [fail("backend", f"cannot reach {url}: {what}",
                         "check sink.url, DNS and firewalls (curl -v URL)")] + extra
        return [fail("backend", f"cannot talk HTTP with {url}: {what}",
                     "check sink.url (curl -v URL)")] + extra
    if status in (401, 403):
        return [fail("backend", f"{url} answered {status}: the token was refused",
                     "check the token: alpacon-agent setup --url URL --token-file FILE")] + extra
    if status in (404, 405):
        return [fail("backend", f"{url} answered {status}: not an ingest endpoint",
                     "check sink.url (it ends in /api/v1/agent/events)")] + extra
    if 300 <= status < 400:
        return [fail("backend", f"{url} answered a redirect ({status}); the agent does not follow redirects",
                     "set sink.url to the URL the backend redirects to")] + extra
    if status in (400, 415, 422):
        return [ok("backend", f"{url} reachable{tls_note}, token accepted "
                   f"(probe answered {status})")] + extra
    if status == 429 or status >= 500:
        return [warn("backend", f"{url} answered {status}: the backend is struggling; "
                     "batches wait in the spool", "retry later")] + extra
    return [warn("backend", f"{url} answered an unexpected {status}")] + extra


#: checks a collector adds (registered by ``agent/cli/main.py``, which may import collectors)
EXTRA_CHECKS: list[Callable[[AgentConfig], list[CheckResult]]] = []


def check_provenance(cfg: AgentConfig) -> list[CheckResult]:
    """Who vouches for the audit rows derived from log lines: the journal, or (files) no one."""
    c = cfg.collectors
    if not (c.auth.enabled or c.sftp.enabled):
        return [ok("provenance", "no audit rows are derived from log lines")]
    files = c.auth.source == "file" or (c.auth.source == "auto" and not c.journald.enabled)
    if files:
        return [warn("provenance", "User activity and WebFTP rows come from log files, which do not record who "
                     "wrote a line: any local user can forge them (rows say provenance.source: file)",
                     "enable collectors.journald (collectors.auth.source: auto) so the journal's record of "
                     "each line's sender vouches for it; see docs/security.md")]
    return [ok("provenance", "audit rows only from journal lines whose sender fits their program")]


def run_checks(config_path: str) -> Iterator[CheckResult]:
    """Every check, in order; checks that need a valid config are skipped without one."""
    results, cfg = check_config_file(config_path)
    yield from results
    if cfg is None:
        return
    yield from check_token(cfg)
    yield from check_journal(cfg)
    yield from check_provenance(cfg)
    service = service_state()
    yield from check_service(service)
    yield from check_hook(cfg, service)
    yield from check_backend(cfg)
    yield from check_spool(cfg)
    yield from check_spool_recovery(cfg)
    for check in EXTRA_CHECKS:
        yield from check(cfg)


def doctor_main(args: argparse.Namespace) -> int:
    path = args.config or DEFAULT_CONFIG_PATH
    results = list(run_checks(path))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            print(f"{r.status:<4}  {r.name:<{width}}  {r.detail}")
            if r.fix and r.status != "OK":
                print(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
        n_fail = sum(r.status == "FAIL" for r in results)
        n_warn = sum(r.status == "WARN" for r in results)
        print(f"\n{len(results)} checks: {n_fail} failed, {n_warn} warnings")
    return 1 if any(r.status == "FAIL" for r in results) else 0


def register(subparsers: Subparsers) -> None:
    """Add ``doctor``."""
    p = subparsers.add_parser(
        "doctor",
        help="check this server's agent installation and say how to fix what is wrong",
        description="Checks config, token file, journal access, hook socket, backend "
        "reachability and TLS, and spool health. Exit 0 if nothing failed, 1 otherwise.",
    )
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=doctor_main)
