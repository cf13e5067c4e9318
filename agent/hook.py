"""The hook API server: a Unix socket speaking JSON lines for local producers.

See :mod:`agent.hookclient` for the protocol. Each connection's peer is identified with
SO_PEERCRED and checked against ``hook.allow_users`` / ``hook.allow_groups`` (see
:mod:`agent.hookpeer`) before it takes a slot: a refused peer never holds one. Slots are
counted per peer uid (``hook.max_connections_per_uid``), and when all ``hook.max_connections``
are taken the uid holding the most gives its longest-idle connection up to a uid holding fewer,
so one uid cannot starve another. A connection that sends no whole message and reads no answer
for ``hook.idle_timeout_s`` is closed. Lines are size-capped (an oversize line is discarded up to
its newline and answered ``invalid``), parsed with a depth cap, schema-checked per kind and
answered in order; ``ok`` is sent only once the event is durably spooled. Every message that
fails gets an answer and a one-line log (rate-limited); none ends the connection. Components
add operations with :meth:`HookServer.register_op`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.config import HookConfig
from agent.errors import SpoolFull
from agent.events import KINDS
from agent.hookaccess import Slot, SlotTable, grant_groups
from agent.hookmsg import event_from_emit, message_ref, parse_message
from agent.hookpeer import Peer, Pushers, peer_of, resolve_ids
from agent.logs import RateLimitedLog
from agent.metrics import AgentMetrics
from agent.pipeline.batcher import Batcher

__all__ = ["HookServer", "OpHandler", "Peer"]

log = structlog.get_logger("hook")

MAX_PENDING_ANSWERS = 4096
#: refused peers waiting (briefly) for their first request so they can read why; more are cut off
MAX_DENIED_WAITING = 16
DENIED_READ_TIMEOUT_S = 2.0
#: bytes read from a connection at a time
READ_CHUNK = 262144

OpHandler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


def _answer(status: str, ref: Any = None, **fields: Any) -> dict[str, Any]:
    a: dict[str, Any] = {"status": status, **fields}
    if ref is not None:
        a["ref"] = ref
    return a


def _why(exc: BaseException) -> str:
    """An exception as one short line (never a traceback)."""
    return f"{type(exc).__name__}: {exc}"[:300]


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
        self._slots = SlotTable(cfg.max_connections, cfg.max_connections_per_uid)
        self._denied_waiting = 0
        self.allowed_uids, self.allowed_gids = resolve_ids(cfg.allow_users, cfg.allow_groups, "hook.allow_")
        self.pushers = Pushers(cfg.push)
        self._ok_counter = metrics.hook_requests.labels("emit", "ok")
        self._refusals = RateLimitedLog(log)

    def register_op(self, name: str, handler: OpHandler) -> None:
        """Serve ``{"op": name, …}`` with ``handler(msg, peer) -> answer``."""
        self._ops[name] = handler

    def allowed(self, peer: Peer) -> bool:
        return peer.uid in self.allowed_uids or bool(peer.groups & self.allowed_gids)

    @property
    def connections(self) -> int:
        """Slots taken (connections of allowed peers being served)."""
        return len(self._slots)

    def _refused(self, peer: Peer, status: str, reason: str) -> None:
        self._refusals.warning("hook message refused", status=status, reason=reason[:300], uid=peer.uid,
                               pid=peer.pid)

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
            # the stream's own buffer pauses the socket at twice this: small, so that a connection
            # holds at most about one message (in ``_serve_conn``'s buffer) and half a MiB more
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(path), limit=READ_CHUNK, backlog=128
            )
        finally:
            os.umask(old)
        os.chmod(path, self.cfg.mode)
        grant_groups(path, self.cfg.mode, self.allowed_gids)
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
        conn: Slot | None = None
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            if not self.allowed(peer):  # checked before a slot is taken
                await self._deny(peer, reader, writer)
                return
            conn, evicted, why = self._slots.take(peer, writer.transport.abort, asyncio.get_running_loop().time())
            if evicted is not None:
                self.metrics.hook_connections.labels("evicted").inc()
                log.warning("hook connection closed to make room for another uid", uid=evicted.peer.uid,
                            pid=evicted.peer.pid, for_uid=peer.uid)
            if conn is None:
                self.metrics.hook_connections.labels("busy").inc()
                log.warning("hook connection refused", uid=peer.uid, pid=peer.pid, reason=why)
                writer.write(orjson.dumps(_answer("busy", reason=why)) + b"\n")
                await writer.drain()
                return
            self.metrics.hook_connections.labels("served").inc()
            await self._serve_conn(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except asyncio.CancelledError:
            # close() ends the connections: ended quietly (3.11's stream callback would log a
            # traceback for a task that ends cancelled)
            pass
        finally:
            if conn is not None:
                self._slots.release(conn)
            self._conns.discard(task)
            self._writers.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _deny(self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.metrics.hook_requests.labels("any", "denied").inc()
        self.metrics.hook_connections.labels("denied").inc()
        log.warning("hook connection denied", uid=peer.uid, gid=peer.gid, pid=peer.pid)
        reason = f"uid {peer.uid} is not allowed (hook.allow_users / hook.allow_groups)"
        if self._denied_waiting < MAX_DENIED_WAITING:
            # answer the first request (read with a cap and a deadline) so the producer can read why
            self._denied_waiting += 1
            try:
                with contextlib.suppress(TimeoutError, ValueError, asyncio.LimitOverrunError, ConnectionError):
                    async with asyncio.timeout(DENIED_READ_TIMEOUT_S):
                        await reader.readuntil(b"\n")
            finally:
                self._denied_waiting -= 1
        writer.write(orjson.dumps(_answer("denied", reason=reason)) + b"\n")
        await writer.drain()

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Slot) -> None:
        answers: asyncio.Queue[Any] = asyncio.Queue(maxsize=MAX_PENDING_ANSWERS)
        wtask = asyncio.create_task(self._write_answers(answers, writer, conn))
        limit = self.cfg.max_message_bytes
        idle = self.cfg.idle_timeout_s
        loop = asyncio.get_running_loop()
        peer = conn.peer

        async def put(item: Any) -> None:
            conn.pending += 1
            conn.last_active = loop.time()
            await answers.put(item)

        async def oversize() -> None:
            reason = f"message larger than {limit} bytes"
            self.metrics.hook_requests.labels("unknown", "invalid").inc()
            self._refused(peer, "invalid", reason)
            await put(_answer("invalid", reason=reason))

        # a bytearray, searched only where it is new: a line trickled in small pieces costs
        # linear time, not quadratic (a slow producer must not eat the event loop)
        buf = bytearray()
        scanned = 0
        discarding = False
        try:
            while True:
                wait = idle if conn.pending else conn.last_active + idle - loop.time()
                try:
                    async with asyncio.timeout(max(0.0, wait)):
                        chunk = await reader.read(READ_CHUNK)
                except TimeoutError:
                    if conn.pending or loop.time() - conn.last_active < idle:
                        continue  # answers still being made (a long op), or it was active meanwhile
                    self.metrics.hook_connections.labels("idle_closed").inc()
                    log.info("hook connection idle; closed", uid=peer.uid, pid=peer.pid, idle_s=idle)
                    break
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
                    if discarding or len(line) > limit:
                        discarding = False
                        await oversize()
                    elif line.strip():
                        if self.batcher.push_full:  # stop reading producers until it has room
                            await self.batcher.push_room()
                        await put(self._handle_line(line, peer))
                if start:
                    del buf[:start]
                if len(buf) > limit:
                    discarding = True
                    buf.clear()
                scanned = len(buf)
            if buf.strip() and not discarding:
                await put(self._handle_line(buf, peer))
        finally:
            await answers.put(None)
            await wtask

    async def _write_answers(self, answers: asyncio.Queue[Any], writer: asyncio.StreamWriter, conn: Slot) -> None:
        out: list[bytes] = []
        closed = False
        loop = asyncio.get_running_loop()
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
                ans = await self._resolve_answer(item, conn.peer)
            conn.pending -= 1
            if closed:
                continue
            try:
                out.append(orjson.dumps(ans))
            except TypeError as exc:  # an op's answer that is not JSON
                log.error("hook answer could not be encoded", error=_why(exc))
                out.append(orjson.dumps(_answer("error", reason="the answer could not be encoded")))
            if len(out) >= 256 or answers.empty():
                closed = not await self._send(writer, out, conn)
                out = []
                conn.last_active = loop.time()
        if out and not closed:
            await self._send(writer, out, conn)

    async def _send(self, writer: asyncio.StreamWriter, out: list[bytes], conn: Slot) -> bool:
        """Write answers; False (and the connection cut) when the producer stopped reading them."""
        try:
            writer.write(b"\n".join(out) + b"\n")
            async with asyncio.timeout(self.cfg.idle_timeout_s):
                await writer.drain()
        except TimeoutError:
            self.metrics.hook_connections.labels("not_reading").inc()
            log.warning("hook producer reads no answers; connection closed", uid=conn.peer.uid, pid=conn.peer.pid,
                        waited_s=self.cfg.idle_timeout_s)
            writer.transport.abort()
            return False
        except (ConnectionError, OSError):
            return False
        return True

    async def _resolve_answer(self, item: Any, peer: Peer) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        if isinstance(item, tuple):  # (event id, ref, flush future, kind)
            ev_id, ref, fut, kind = item
            try:
                await fut
            except SpoolFull as exc:
                self.metrics.hook_requests.labels("emit", "busy").inc()
                self._refused(peer, "busy", f"spool full: {exc}")
                return _answer("busy", ref, reason=f"spool full: {exc}")
            except Exception as exc:  # noqa: BLE001 - the producer is told, the agent goes on
                log.error("spooling failed", error=_why(exc))
                self.metrics.hook_requests.labels("emit", "error").inc()
                return _answer("error", ref, reason=f"could not spool: {exc}")
            self._ok_counter.inc()
            return _answer("ok", ref, id=ev_id)
        # an awaitable op answer
        return await item

    def _handle_line(self, line: bytes | bytearray, peer: Peer) -> Any:
        """The answer to one message: a dict, an emit's (id, ref, future, kind), or an op's future."""
        try:
            ans = self._dispatch(line, peer)
        except Exception as exc:  # noqa: BLE001 - one message's failure must not end the connection
            self.metrics.hook_requests.labels("unknown", "error").inc()
            ans = _answer("error", reason=f"the message could not be handled: {_why(exc)}")
        if type(ans) is dict:
            self._refused(peer, ans["status"], ans.get("reason", ""))
        return ans

    def _dispatch(self, line: bytes | bytearray, peer: Peer) -> Any:
        msg = parse_message(line)
        if isinstance(msg, str):
            self.metrics.hook_requests.labels("unknown", "invalid").inc()
            return _answer("invalid", reason=msg)
        ref = message_ref(msg)
        op = msg.get("op", "emit")
        try:
            if op == "emit":
                return self._emit(msg, ref, peer)
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                self.metrics.hook_requests.labels("unknown", "invalid").inc()
                return _answer("invalid", ref, reason=f"unknown op {str(op)[:64]!r}")
            return asyncio.ensure_future(self._run_op(op, handler, msg, peer, ref))
        except Exception as exc:  # noqa: BLE001 - answered with the producer's ref
            self.metrics.hook_requests.labels("emit" if op == "emit" else "unknown", "error").inc()
            return _answer("error", ref, reason=f"the message could not be handled: {_why(exc)}")

    async def _run_op(self, op: str, handler: OpHandler, msg: dict[str, Any], peer: Peer, ref: Any) -> dict[str, Any]:
        try:
            ans = await handler(msg, peer)
        except Exception as exc:  # noqa: BLE001 - one op's failure must not end the connection
            log.error("hook op failed", op=op, uid=peer.uid, error=_why(exc))
            ans = _answer("error", reason=f"{op} failed: {exc}")
        if not isinstance(ans, dict):
            log.error("hook op gave no answer object", op=op, answer_type=type(ans).__name__)
            ans = _answer("error", reason=f"{op} gave no answer")
        self.metrics.hook_requests.labels(op, str(ans.get("status"))).inc()
        if ref is not None:
            ans.setdefault("ref", ref)
        return ans

    def _emit(self, msg: dict[str, Any], ref: Any, peer: Peer) -> Any:
        kind = msg.get("kind")
        if isinstance(kind, str) and kind in KINDS and not self.pushers.allows(peer, kind):
            self.metrics.hook_requests.labels("emit", "denied").inc()
            return _answer("denied", ref, reason=self.pushers.refusal(peer, kind))
        event = event_from_emit(msg, peer.provenance())
        res = event if isinstance(event, str) else self.batcher.submit(event)  # type: ignore[arg-type]
        if isinstance(res, str):
            self.metrics.hook_requests.labels("emit", "invalid").inc()
            return _answer("invalid", ref, reason=res)
        ev_id, fut = res
        return (ev_id, ref, fut, msg["kind"])
