"""Installation commands: ``doctor`` checks a server's agent setup, ``setup`` configures it.

``alpacon-agent doctor`` runs every check (config, token file, journal access, hook socket,
backend reachability and TLS, spool health, service state) and prints each as OK, WARN or
FAIL with how to fix it; the exit status is 1 when any check failed. ``alpacon-agent setup
--url URL --token-file FILE`` stores the token (mode 0600), points the config at the
backend while keeping the file's comments, and starts the service.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_config, parse_config
from agent.errors import ConfigError, SetupError

UNIT = "alpacon-agent.service"
#: present when systemd is the running init (the check sd_booted() makes)
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
SPOOL_FILENAME = "spool.db"
MAX_TOKEN_BYTES = 8192

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the doctor's report: what was checked, how it went and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "OK", detail)


def warn(name: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(name, "WARN", detail, fix)


def fail(name: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(name, "FAIL", detail, fix)


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
    except (OSError, UnicodeDecodeError) as exc:
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


def service_state() -> str | None:
    """``active``/``inactive``/… from systemctl, or None when systemd is not running."""
    systemctl = shutil.which("systemctl")
    if not SYSTEMD_RUN_DIR.is_dir() or systemctl is None:
        return None
    res = subprocess.run([systemctl, "is-active", UNIT], capture_output=True, text=True,
                         timeout=15, check=False)
    return res.stdout.strip() or "unknown"


def check_service() -> list[CheckResult]:
    state = service_state()
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


def _ssl_context(cfg: AgentConfig) -> ssl.SSLContext:
    tls = cfg.sink.tls
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


TLS_FIX = ("set sink.tls.ca_file to the CA that signed the backend's certificate, "
           "or fix the URL's host name")


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
    headers = {"Content-Type": "application/json", "User-Agent": f"alpacon-agent/{__version__}"}
    try:
        token = sink.token()
    except (OSError, UnicodeDecodeError):
        token = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"schema": 1, "probe": "alpacon-agent doctor"}).encode()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    extra = []
    if url.startswith("http://") and not sink.is_local():
        extra.append(warn("backend-tls", f"{url} is plain http: the token travels unencrypted",
                          "use an https:// URL"))
    tls_note = ""
    try:
        ctx = _ssl_context(cfg) if url.startswith("https://") else None
        if ctx is not None and not cfg.sink.tls.verify:
            tls_note = " (certificate NOT verified: sink.tls.verify is false)"
        with urllib.request.urlopen(req, timeout=min(sink.timeout_s, 15.0), context=ctx) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return [fail("backend", f"TLS with {url} failed: {exc}", TLS_FIX)] + extra
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError | ssl.CertificateError):
            return [fail("backend", f"TLS with {url} failed: {reason}", TLS_FIX)] + extra
        return [fail("backend", f"cannot reach {url}: {reason}",
                     "check sink.url, DNS and firewalls (curl -v URL)")] + extra
    except (OSError, ValueError, http.client.HTTPException) as exc:
        what = f"{type(exc).__name__}: {exc}"[:200]
        return [fail("backend", f"cannot talk HTTP with {url}: {what}",
                     "check sink.url (curl -v URL)")] + extra
    if status in (401, 403):
        return [fail("backend", f"{url} answered {status}: the token was refused",
                     "check the token: alpacon-agent setup --url URL --token-file FILE")] + extra
    if status in (404, 405):
        return [fail("backend", f"{url} answered {status}: not an ingest endpoint",
                     "check sink.url (it ends in /api/v1/agent/events)")] + extra
    if 200 <= status < 300 or status in (400, 415, 422):
        return [ok("backend", f"{url} reachable{tls_note}, token accepted "
                   f"(probe answered {status})")] + extra
    if status == 429 or status >= 500:
        return [warn("backend", f"{url} answered {status}: the backend is struggling; "
                     "batches wait in the spool", "retry later")] + extra
    return [warn("backend", f"{url} answered an unexpected {status}")] + extra


def spool_path(cfg: AgentConfig) -> Path:
    try:
        from agent.spool import Spool

        name = Spool.FILENAME
    except (ImportError, AttributeError):
        name = SPOOL_FILENAME
    return Path(cfg.state_dir) / name


def _spool_stats(db: sqlite3.Connection) -> dict[str, Any]:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    out: dict[str, Any] = {}
    if "batches" in tables:
        n, nbytes, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(created) FROM batches").fetchone()
        out.update(batches=n, bytes=nbytes, oldest=oldest)
    if "dead_letters" in tables:
        out["dead_letters"] = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    return out


def check_spool(cfg: AgentConfig) -> list[CheckResult]:
    """The state dir is private, the spool database is intact; pending and dead batches."""
    import time

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
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return [fail("spool", f"{path} cannot be opened: {exc}", "run doctor as root")] + out
    try:
        check = db.execute("PRAGMA quick_check").fetchall()
        stats = _spool_stats(db)
    except sqlite3.Error as exc:
        return [fail("spool", f"{path} is not a readable SQLite database: {exc}",
                     f"stop the agent and move {path} aside (its pending batches are lost)")] + out
    finally:
        db.close()
    if [r[0] for r in check] != ["ok"]:
        first = "; ".join(str(r[0]) for r in check[:3])
        return [fail("spool", f"{path} is damaged: {first}",
                     f"stop the agent, back up and move {path} aside, start it again")] + out
    detail = f"{path} intact"
    if "batches" in stats:
        age = ""
        if stats["oldest"] is not None:
            age = f", oldest {max(0.0, time.time() - float(stats['oldest'])):.0f} s old"
        detail += (f", {stats['batches']} batches pending ({stats['bytes']} bytes "
                   f"of {cfg.spool.max_bytes}{age})")
    out.insert(0, ok("spool", detail))
    dead = stats.get("dead_letters", 0)
    if dead:
        out.append(warn("dead-letters", f"{dead} batches refused by the backend",
                        "see: alpacon-agent spool; after fixing the cause: "
                        "alpacon-agent spool requeue-dead"))
    if stats.get("bytes", 0) > 0.9 * cfg.spool.max_bytes:
        out.append(warn("spool-full", "the spool is over 90% full: the backend is not keeping up",
                        "check the backend check above"))
    return out


def run_checks(config_path: str) -> Iterator[CheckResult]:
    """Every check, in order; checks that need a valid config are skipped without one."""
    results, cfg = check_config_file(config_path)
    yield from results
    if cfg is None:
        return
    steps: list[Callable[[], list[CheckResult]]] = [
        lambda: check_token(cfg),
        lambda: check_journal(cfg),
    ]
    for step in steps:
        yield from step()
    service = service_state()
    yield from check_service()
    yield from check_hook(cfg, service)
    yield from check_backend(cfg)
    yield from check_spool(cfg)


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


# -- setup -----------------------------------------------------------------------------------


def read_token(source: str) -> str:
    """The token from a file (``-`` is stdin): one line, printable, no spaces, capped."""
    if source == "-":
        raw = sys.stdin.buffer.read(MAX_TOKEN_BYTES + 1)
    else:
        try:
            st = os.stat(source)
        except OSError as exc:
            raise SetupError(f"token file {source}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SetupError(f"token file {source} is not a regular file")
        if st.st_size > MAX_TOKEN_BYTES:
            raise SetupError(f"token file {source} is larger than {MAX_TOKEN_BYTES} bytes")
        raw = Path(source).read_bytes()
    if len(raw) > MAX_TOKEN_BYTES:
        raise SetupError(f"token is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SetupError("token contains non-ASCII bytes") from None
    if not token:
        raise SetupError("token is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise SetupError("token must be one line without spaces or control characters")
    return token


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SetupError(f"--url {url!r}: must be an http:// or https:// URL with a host")
    if any(c.isspace() for c in url) or len(url) > 2048:
        raise SetupError("--url must not contain spaces and must be under 2048 characters")
    return url


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write atomically: a temp file in the same directory, fsynced, renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _put(m: Any, key: str, value: Any, after: str | None) -> None:
    """Set ``m[key]``; a new key goes right after ``after`` (or first) rather than last."""
    if key in m:
        m[key] = value
        return
    keys = list(m.keys())
    pos = keys.index(after) + 1 if after in keys else 0
    m.insert(pos, key, value)


def edit_config(text: str, url: str, token_file: str, server: str | None) -> str:
    """``text`` with sink.type/url/token_file (and server) set, comments kept."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.compat import StringIO

    # a commented-out placeholder ("  #token_file:") becomes the key, so the value lands
    # where the file documents it rather than at the end of the block
    for placeholder in (r"  #token_file:", r"#server:" if server is not None else None):
        if placeholder is None:
            continue
        key = placeholder.replace("#", "")
        if not re.search(rf"(?m)^{key}", text):
            text = re.sub(rf"(?m)^{placeholder}.*$", key, text, count=1)
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    try:
        doc = y.load(text) if text.strip() else None
    except Exception as exc:  # ruamel raises many unrelated types for bad YAML
        raise SetupError(f"the config is not valid YAML: {exc}") from None
    if doc is None:  # empty or only comments: keep the text, append the settings
        fresh = CommentedMap()
        if server is not None:
            fresh["server"] = server
        fresh["sink"] = CommentedMap(type="http", url=url, token_file=token_file)
        buf = StringIO()
        y.dump(fresh, buf)
        head = text.rstrip("\n") + "\n" if text.strip() else ""
        return head + buf.getvalue()
    if not isinstance(doc, dict):
        raise SetupError("the config's top level is not a mapping")
    sink = doc.get("sink")
    if sink is None:
        sink = doc["sink"] = CommentedMap()
    if not isinstance(sink, dict):
        raise SetupError("the config's 'sink' is not a mapping")
    if sink.get("type", "http") != "http":
        sink["type"] = "http"
    _put(sink, "url", url, after="type")
    _put(sink, "token_file", token_file, after="url")
    if server is not None:
        _put(doc, "server", server, after=None)
    buf = StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def _same_apart_from(old: Any, new: Any, server: str | None) -> bool:
    """The edit changed nothing but the keys setup owns (checked with the agent's loader)."""
    old = dict(old or {})
    new = dict(new or {})
    for d in (old, new):
        d["sink"] = {k: v for k, v in dict(d.get("sink") or {}).items()
                     if k not in ("type", "url", "token_file")}
        if server is not None:
            d.pop("server", None)
    return old == new


def start_service() -> tuple[bool, str]:
    """Enable and (re)start the unit when systemd runs; else say how to start by hand."""
    systemctl = shutil.which("systemctl")
    if not SYSTEMD_RUN_DIR.is_dir() or systemctl is None:
        return False, "systemd is not running here"
    for cmd in (["enable", UNIT], ["restart", UNIT]):
        res = subprocess.run([systemctl, *cmd], capture_output=True, text=True, timeout=120,
                             check=False)
        if res.returncode != 0:
            return False, f"systemctl {' '.join(cmd)} failed: {res.stderr.strip()}"
    return True, f"{UNIT} enabled and started"


def is_configured(cfg: AgentConfig) -> tuple[bool, str]:
    """Whether the agent has somewhere to ship: a non-http sink, or a URL with a token."""
    if cfg.sink.type != "http":
        return True, f"sink type {cfg.sink.type}"
    if not cfg.sink.token_file:
        return False, "no sink.token_file"
    try:
        token = cfg.sink.token()
    except (OSError, UnicodeDecodeError) as exc:
        return False, f"token file unreadable: {exc}"
    if not token:
        return False, "token file is empty"
    return True, f"backend {cfg.sink.url}"


def setup_main(args: argparse.Namespace) -> int:
    path = Path(args.config or DEFAULT_CONFIG_PATH)
    if args.check:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(f"not configured: {exc}", file=sys.stderr)
            return 1
        configured, why = is_configured(cfg)
        if not args.quiet:
            print(("configured: " if configured else "not configured: ") + why)
        return 0 if configured else 1
    if not args.url or not args.token_file:
        print("setup: --url and --token-file are required (or --check)", file=sys.stderr)
        return 2
    try:
        url = check_url(args.url)
        token = read_token(args.token_file)
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        try:
            old = yaml.safe_load(text) if text else {}
        except yaml.YAMLError as exc:
            raise SetupError(f"{path} is not valid YAML: {exc}") from None
        token_path = Path(args.token_dest or path.parent / "token")
        new_text = edit_config(text, url, str(token_path), args.server)
        new = yaml.safe_load(new_text)
        if not _same_apart_from(old, new, args.server):
            raise SetupError(f"editing {path} would change other settings; set sink.url and "
                             "sink.token_file by hand")
        write_private(token_path, (token + "\n").encode())
        try:
            parse_config(new, str(path))
        except ConfigError as exc:
            raise SetupError("the resulting config is invalid: " + "; ".join(exc.problems)) from None
    except SetupError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 2
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    write_private(path, new_text.encode("utf-8"), mode)
    print(f"token written to {token_path} (mode 0600)")
    print(f"{path}: sink.url = {url}, sink.token_file = {token_path}")
    if args.no_start:
        return 0
    started, how = start_service()
    if started:
        print(how)
        print("check it with: alpacon-agent doctor")
        return 0
    print(f"{how}; start the agent with:\n  alpacon-agent run --config {path}")
    return 0 if how == "systemd is not running here" else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from agent.cli import add_config_arg

    p = subparsers.add_parser(
        "doctor",
        help="check this server's agent installation and say how to fix what is wrong",
        description="Checks config, token file, journal access, hook socket, backend "
        "reachability and TLS, and spool health. Exit 0 if nothing failed, 1 otherwise.",
    )
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=doctor_main)

    s = subparsers.add_parser(
        "setup",
        help="point the agent at the backend, store its token and start the service",
        description="Writes the token to TOKEN_DEST (default: token beside the config) with "
        "mode 0600, sets sink.url and sink.token_file in the config (comments kept), and "
        "enables and restarts the service when systemd is running.",
    )
    add_config_arg(s)
    s.add_argument("--url", help="the backend's ingest URL (https://…/api/v1/agent/events)")
    s.add_argument("--token-file", metavar="FILE", help="file holding the token ('-' = stdin)")
    s.add_argument("--token-dest", metavar="PATH", help=argparse.SUPPRESS)
    s.add_argument("--server", help="name of this server in the views (default: hostname)")
    s.add_argument("--no-start", action="store_true", help="only write the files")
    s.add_argument("--check", action="store_true",
                   help="exit 0 if a backend and token are configured, 1 if not")
    s.add_argument("--quiet", "-q", action="store_true", help="with --check: print nothing")
    s.set_defaults(func=setup_main)
