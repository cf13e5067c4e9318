"""``alpacon-agent setup``: point the agent at the backend, store its token, start the service.

``alpacon-agent setup --url URL --token-file FILE`` stores the token (mode 0600), sets
sink.url and sink.token_file in the config while keeping the file's comments, and enables and
restarts the service when systemd runs. ``setup --check`` says whether that was done.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent.cli.args import add_config_arg
from agent.cli.unit import UNIT, systemctl
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_config, parse_config
from agent.errors import ConfigError, SetupError
from agent.tokenfile import MAX_TOKEN_BYTES, TokenError, check_token_bytes

if TYPE_CHECKING:
    from agent.cli.args import Subparsers



def read_token(source: str) -> str:
    """The token from a file (``-`` is stdin): one line of printable ASCII, capped (agent.tokenfile)."""
    if source == "-":
        raw = sys.stdin.buffer.read(MAX_TOKEN_BYTES + 1)
    else:
        try:
            st = os.stat(source)
        except OSError as exc:
            raise SetupError(f"token file {source}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SetupError(f"token file {source} is not a regular file")
        with open(source, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    try:
        token = check_token_bytes(raw)
    except TokenError as exc:
        raise SetupError(f"token: {exc}") from None
    if not token:
        raise SetupError("token is empty")
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
    for cmd in (["enable", UNIT], ["restart", UNIT]):
        res = systemctl(*cmd)
        if res is None:
            return False, "systemd is not running here"
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
    except (OSError, ValueError) as exc:
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


def register(subparsers: Subparsers) -> None:
    """Add ``setup``."""
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
