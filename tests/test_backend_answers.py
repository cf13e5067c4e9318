"""Hostile and broken backend answers: none of them loses an event or wedges the shipper."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from agent.hookclient import HookClient
from tests.support import free_port, wait_until


class ScriptedBackend:
    """An HTTP backend answering a fixed script of bad answers, then storing (200) every batch."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.port = free_port()
        self.stored: list[str] = []
        self.seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        step = self.script.pop(0) if self.script else "ok"
        self.seen.append(step)
        match step:
            case "garbage_200":  # stored, but the answer body is nonsense: still a success
                self._store(body)
                return web.Response(status=200, body=b"\x00\xff not json")
            case "huge_503":
                return web.Response(status=503, body=b"x" * 10_000_000)
            case "bad_retry_after":
                return web.Response(status=429, headers={"Retry-After": "tomorrow-ish \x01"})
            case "superscript_retry_after":  # a character str.isdigit() accepts but float() does not
                return web.Response(status=503, headers={"Retry-After": "\u00b2"})
            case "redirect":
                return web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})
            case "hang":
                await asyncio.sleep(5)  # longer than the agent's timeout
                return web.Response(status=200)
            case "reset":
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=200)
            case "html_500":
                return web.Response(status=500, text="<html>oops</html>", content_type="text/html")
            case _:
                self._store(body)
                return web.json_response({"stored": 1})

    def _store(self, body: bytes) -> None:
        # aiohttp's server undoes Content-Encoding: gzip itself
        doc = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
        self.stored += [e["id"] for e in doc["events"]]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest", self._handle)
        runner = self._runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> ScriptedBackend:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def backend() -> Iterator[ScriptedBackend]:
    b = ScriptedBackend(["huge_503", "bad_retry_after", "redirect", "hang", "reset", "html_500", "garbage_200"])
    b.start()
    yield b
    b.stop()


def push_and_drain(agent_factory: Any, url: str, prefix: str, n: int, *, timeout_s: float, max_events: int,
                   drain_s: float = 60) -> tuple[Any, list[dict[str, Any]]]:
    """An agent shipping to ``url``: ``n`` user_activity events pushed (each answered ok) and the
    spool drained; returns the agent and the events."""
    agent = agent_factory(None, sink={"url": url, "timeout_s": timeout_s},
                          batch={"max_events": max_events, "max_wait_ms": 20})
    agent.start()
    events = [{"kind": "user_activity", "id": f"{prefix}-{i:04d}",
               "data": {"user": "u", "action": "login", "result": 200}} for i in range(n)]
    with HookClient(agent.socket) as c:
        assert all(a["status"] == "ok" for a in c.request_many(events))
    agent.wait_drained(drain_s)
    return agent, events


class TestBackendAnswers:
    def test_every_bad_answer_is_retried_and_nothing_is_lost(self, agent_factory, backend, tmp_path):
        """Huge 503 bodies, garbage Retry-After, redirects, hangs, resets, HTML 500s, garbage 200s: all arrive."""
        agent, events = push_and_drain(agent_factory, backend.url, "answers", 50, timeout_s=1.0,
                                       max_events=10)
        wait_until(lambda: not backend.script, 10, what="script used up")
        assert set(backend.stored) == {e["id"] for e in events}
        assert backend.seen[:7] == ["huge_503", "bad_retry_after", "redirect", "hang", "reset", "html_500",
                                    "garbage_200"]
        assert agent.proc.poll() is None
        assert agent.metric("alpacon_agent_ship_retries_total") >= 6
        assert json.loads(agent.cli("spool", "--json").stdout)["dead_letters"] == 0


class RedirectingBackend(ScriptedBackend):
    """A backend whose ingest URL first redirects: 302 to a page that answers GET with 200, and
    307 to another origin that would take the POST and answer 200."""

    def __init__(self, script: list[str], elsewhere: ScriptedBackend) -> None:
        super().__init__(script)
        self.elsewhere = elsewhere
        self.landings = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.script and self.script[0] in ("redirect_302_landing", "redirect_307_elsewhere"):
            await request.read()
            step = self.script.pop(0)
            self.seen.append(step)
            if step == "redirect_302_landing":
                return web.Response(status=302, headers={"Location": "/landing"})
            return web.Response(status=307, headers={"Location": self.elsewhere.url})
        return await super()._handle(request)

    async def _landing(self, request: web.Request) -> web.StreamResponse:
        self.landings += 1
        return web.Response(status=200, text="<html>welcome, please log in</html>", content_type="text/html")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest", self._handle)
        app.router.add_get("/landing", self._landing)
        runner = self._runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()


class HugeOkBackend(ScriptedBackend):
    """A backend that stores the first batch and answers it 200 with a 512 MB body."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.script and self.script[0] == "huge_200":
            body = await request.read()
            self.seen.append(self.script.pop(0))
            self._store(body)
            resp = web.StreamResponse(status=200, headers={"Content-Length": str(512 * 1024 * 1024)})
            await resp.prepare(request)
            chunk = b"x" * (1024 * 1024)
            try:
                for _ in range(512):
                    await resp.write(chunk)
            except (ConnectionError, OSError):
                pass
            return resp
        return await super()._handle(request)


def _peak_rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class TestHostileAnswers:
    def test_redirects_are_not_taken_for_storage(self, agent_factory, tmp_path):
        """A 302 to a page that answers GET 200, or a 307 to another origin, is not an acknowledgement."""
        elsewhere = ScriptedBackend([]).start()
        backend = RedirectingBackend(["redirect_302_landing", "redirect_307_elsewhere"], elsewhere).start()
        try:
            agent, events = push_and_drain(agent_factory, backend.url, "redirect", 5, timeout_s=5.0,
                                           max_events=100)
            assert backend.seen[:2] == ["redirect_302_landing", "redirect_307_elsewhere"]
            assert set(backend.stored) == {e["id"] for e in events}
            assert elsewhere.seen == [] and elsewhere.stored == []
            assert backend.landings == 0
        finally:
            backend.stop()
            elsewhere.stop()

    def test_a_huge_2xx_body_is_not_read_into_memory(self, agent_factory, tmp_path):
        """A 200 answer with a 512 MB body leaves the agent's peak memory far below that; all arrive."""
        backend = HugeOkBackend(["huge_200"]).start()
        try:
            agent, events = push_and_drain(agent_factory, backend.url, "huge-ok", 10, timeout_s=30.0,
                                           max_events=5)
            assert backend.seen[:1] == ["huge_200"]
            assert set(backend.stored) == {e["id"] for e in events}
            assert _peak_rss_bytes(agent.proc.pid) < 256 * 1024 * 1024
        finally:
            backend.stop()

    def test_a_retry_after_that_only_looks_numeric_is_retried(self, agent_factory, tmp_path):
        """503 with 'Retry-After: \u00b2' (a digit to str.isdigit, not to float) is retried; shipping goes on."""
        backend = ScriptedBackend(["superscript_retry_after"]).start()
        try:
            agent, events = push_and_drain(agent_factory, backend.url, "retry-after", 10, timeout_s=5.0,
                                           max_events=5, drain_s=30)
            assert backend.seen[:1] == ["superscript_retry_after"]
            assert set(backend.stored) == {e["id"] for e in events}
        finally:
            backend.stop()
