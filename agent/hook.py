"""The hook API server: a Unix socket speaking JSON lines for local producers.

See :mod:`agent.hookclient` for the protocol. Each connection's peer is identified with
SO_PEERCRED and checked against ``hook.allow_users`` / ``hook.allow_groups``; each pushed event
against ``hook.push`` (who may push which kind: ``denied`` with the reason otherwise), and it is
stamped with its sender (``data.provenance``: uid, gid, pid and executable from SO_PEERCRED and
``/proc``), which the producer cannot set: a ``sender`` or ``provenance`` it sends is dropped. Lines are
size-capped (an oversize line is discarded up to its newline and answered ``invalid``),
parsed, schema-checked per kind and answered in order; ``ok`` is sent only once the event is
durably spooled. Components add operations with :meth:`HookServer.register_op`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.config import HookConfig
from agent.errors import SpoolFull
from agent.events import KINDS, format_ts, parse_ts
from agent.hookpeer import Peer, Pushers, peer_of, resolve_ids
from agent.metrics import AgentMetrics
from agent.pipeline.batcher import Batcher
from agent.schema import SchemaError, validate_data

log = structlog.get_logger("hook")

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
MAX_PENDING_ANSWERS = 4096
_EMIT_FIELDS = frozenset({"op", "kind", "data", "ts", "id", "ref", "sender"})
#: what a producer may not say about itself: the agent writes it from the socket's credentials
_SENDER_FIELDS = ("sender", "provenance")


OpHandler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


def _answer(status: str, ref: Any = None, **fields: Any) -> dict[str, Any]:
    a: dict[str, Any] = {"status": status, **fields}
    if ref is not None:
        a["ref"] = ref
    return a


class HookServer:
    """Serves the hook socket; one task per connection, answers in request order."""

    def __init__(self, cfg: HookConfig, batcher: Batcher, metrics: AgentMetrics) -> None:
        self.cfg = cfg
        self.batcher = batcher
        self.metrics = metrics
        self._ops: dict[str, OpHandler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.allowed_uids, self.allowed_gids = resolve_ids(cfg.allow_users, cfg.allow_groups, "hook.allow_")
        self.pushers = Pushers(cfg.push)
        self._ok_counter = metrics.hook_requests.labels("emit", "ok")

    def register_op(self, name: str, handler: OpHandler) -> None:
        """Serve ``{"op": name, …}`` with ``handler(msg, peer) -> answer``."""
        self._ops[name] = handler

    def allowed(self, peer: Peer) -> bool:
        return peer.uid in self.allowed_uids or bool(peer.groups & self.allowed_gids)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        path = Path(self.cfg.socket)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
            else:
                raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(path), limit=self.cfg.max_message_bytes + 2, backlog=128
            )
        finally:
            os.umask(old)
        os.chmod(path, self.cfg.mode)
        gids = sorted(self.allowed_gids)
        if gids:
            with contextlib.suppress(OSError):
                os.chown(path, -1, gids[0])
        log.info("hook API listening", socket=str(path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            # each connection sends the answers it has; one whose producer does not read them
            # is cut off, or it would hold up the stop (or reload) for ever
            _, stuck = await asyncio.wait(set(self._conns), timeout=2.0)
            for t in stuck:
                w = self._writers.get(t)
                if w is not None:
                    w.transport.abort()
        await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            Path(self.cfg.socket).unlink()

    # -- one connection ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers[task] = writer
        try:
            await self._serve_conn(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            self._writers.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = peer_of(sock)
        if len(self._conns) > self.cfg.max_connections:
            writer.write(orjson.dumps(_answer("busy", reason="too many connections")) + b"\n")
            await writer.drain()
            return
        if not self.allowed(peer):
            self.metrics.hook_requests.labels("any", "denied").inc()
            log.warning("hook connection denied", uid=peer.uid, gid=peer.gid, pid=peer.pid)
            reason = f"uid {peer.uid} is not allowed (hook.allow_users / hook.allow_groups)"
            # answer the first request (read with a cap and a deadline) so the producer can read why
            with contextlib.suppress(TimeoutError, ValueError, asyncio.LimitOverrunError):
                async with asyncio.timeout(5.0):
                    await reader.readuntil(b"\n")
            writer.write(orjson.dumps(_answer("denied", reason=reason)) + b"\n")
            await writer.drain()
            return
        answers: asyncio.Queue[Any] = asyncio.Queue(maxsize=MAX_PENDING_ANSWERS)
        wtask = asyncio.create_task(self._write_answers(answers, writer))
        limit = self.cfg.max_message_bytes
        # a bytearray, searched only where it is new: a line trickled in small pieces costs
        # linear time, not quadratic (a slow producer must not eat the event loop)
        buf = bytearray()
        scanned = 0
        discarding = False
        try:
            while True:
                chunk = await reader.read(262144)
                if not chunk:
                    break
                buf += chunk
                start = 0
                while True:
                    nl = buf.find(b"\n", max(start, scanned))
                    if nl < 0:
                        break
                    line = buf[start:nl]
                    start = nl + 1
                    if discarding:
                        discarding = False
                        await answers.put(_answer("invalid", reason=f"message larger than {limit} bytes"))
                        self.metrics.hook_requests.labels("unknown", "invalid").inc()
                        continue
                    if len(line) > limit:
                        await answers.put(_answer("invalid", reason=f"message larger than {limit} bytes"))
                        self.metrics.hook_requests.labels("unknown", "invalid").inc()
                        continue
                    if line.strip():
                        await answers.put(self._handle_line(line, peer))
                if start:
                    del buf[:start]
                if len(buf) > limit:
                    discarding = True
                    buf.clear()
                scanned = len(buf)
            if buf.strip() and not discarding:
                await answers.put(self._handle_line(buf, peer))
        finally:
            await answers.put(None)
            await wtask

    async def _write_answers(self, answers: asyncio.Queue[Any], writer: asyncio.StreamWriter) -> None:
        out: list[bytes] = []
        closed = False
        while True:
            item = await answers.get()
            if item is None:
                break
            if type(item) is tuple and item[2].done() and item[2].exception() is None:
                # the common case, without a coroutine per answer: already spooled
                self._ok_counter.inc()
                ans = {"status": "ok", "id": item[0]}
                if item[1] is not None:
                    ans["ref"] = item[1]
            else:
                ans = await self._resolve_answer(item)
            if closed:
                continue
            out.append(orjson.dumps(ans))
            if len(out) >= 256 or answers.empty():
                try:
                    writer.write(b"\n".join(out) + b"\n")
                    await writer.drain()
                except (ConnectionError, OSError):
                    closed = True
                out = []
        if out and not closed:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(b"\n".join(out) + b"\n")
                await writer.drain()

    async def _resolve_answer(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        if isinstance(item, tuple):  # (event id, ref, flush future)
            ev_id, ref, fut, kind = item
            try:
                await fut
            except SpoolFull as exc:
                self.metrics.hook_requests.labels("emit", "busy").inc()
                return _answer("busy", ref, reason=f"spool full: {exc}")
            except Exception as exc:  # noqa: BLE001 - the producer is told, the agent goes on
                log.error("spooling failed", error=str(exc))
                self.metrics.hook_requests.labels("emit", "error").inc()
                return _answer("error", ref, reason=f"could not spool: {exc}")
            self._ok_counter.inc()
            return _answer("ok", ref, id=ev_id)
        # an awaitable op answer
        return await item

    def _handle_line(self, line: bytes | bytearray, peer: Peer) -> Any:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.metrics.hook_requests.labels("unknown", "invalid").inc()
            return _answer("invalid", reason=f"not JSON: {exc}")
        if not isinstance(msg, dict):
            self.metrics.hook_requests.labels("unknown", "invalid").inc()
            return _answer("invalid", reason="a message must be a JSON object")
        ref = msg.get("ref")
        if ref is not None and not isinstance(ref, int | str):
            ref = None
        op = msg.get("op", "emit")
        if op == "emit":
            return self._emit(msg, ref, peer)
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            self.metrics.hook_requests.labels("unknown", "invalid").inc()
            return _answer("invalid", ref, reason=f"unknown op {op!r}")
        return asyncio.ensure_future(self._run_op(op, handler, msg, peer, ref))

    async def _run_op(self, op: str, handler: OpHandler, msg: dict[str, Any], peer: Peer, ref: Any) -> dict[str, Any]:
        try:
            ans = await handler(msg, peer)
        except Exception as exc:  # noqa: BLE001 - one op's failure must not end the connection
            log.exception("hook op failed", op=op)
            ans = _answer("error", reason=f"{op} failed: {exc}")
        self.metrics.hook_requests.labels(op, str(ans.get("status"))).inc()
        if ref is not None:
            ans.setdefault("ref", ref)
        return ans

    def _emit(self, msg: dict[str, Any], ref: Any, peer: Peer) -> Any:
        def invalid(reason: str) -> dict[str, Any]:
            self.metrics.hook_requests.labels("emit", "invalid").inc()
            return _answer("invalid", ref, reason=reason)

        if not _EMIT_FIELDS.issuperset(msg):
            return invalid(f"unknown fields: {', '.join(sorted(set(msg) - _EMIT_FIELDS))}")
        kind = msg.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            return invalid(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        if not self.pushers.allows(peer, kind):
            self.metrics.hook_requests.labels("emit", "denied").inc()
            return _answer("denied", ref, reason=self.pushers.refusal(peer, kind))
        data = msg.get("data")
        if not isinstance(data, dict):
            return invalid("'data' must be an object")
        for f in _SENDER_FIELDS:  # the producer does not say who it is: the socket does
            data.pop(f, None)
        data["provenance"] = peer.provenance()
        try:
            validate_data(kind, data)
        except SchemaError as exc:
            return invalid(str(exc))
        event: dict[str, Any] = {"kind": kind, "data": data}
        ts = msg.get("ts")
        if ts is not None:
            if not isinstance(ts, str):
                return invalid("'ts' must be an RFC 3339 string")
            try:
                event["ts"] = format_ts(parse_ts(ts))
            except (ValueError, OverflowError, OSError):
                return invalid(f"'ts' is not an RFC 3339 timestamp: {ts[:64]!r}")
        else:
            event["ts"] = format_ts()
        ev_id = msg.get("id")
        if ev_id is not None:
            if not isinstance(ev_id, str) or _ID_RE.fullmatch(ev_id) is None:
                return invalid("'id' must be 8-128 characters of [A-Za-z0-9._:-], starting with a letter or digit")
            event["id"] = ev_id
        res = self.batcher.submit(event)  # type: ignore[arg-type]  # a dict built field by field, checked above
        if isinstance(res, str):
            return invalid(res)
        ev_id, fut = res
        return (ev_id, ref, fut, kind)
