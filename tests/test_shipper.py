"""The shipper on a real spool, sending through a real HttpSink on an injected aiohttp session to a
scripted backend on 127.0.0.1: each decision (retry, pause, split, dead letter) seen as behaviour."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.scripted_backend import ScriptedBackend, ship_all, spool_with

ALL_THREE = ["ev-0000-0000", "ev-0001-0000", "ev-0002-0000"]


def _bug_session(failures: list[BaseException]) -> aiohttp.ClientSession:
    """A session whose request hook raises the given bug-shaped exceptions, one per request, in order."""

    async def on_request_start(session: object, ctx: object, params: object) -> None:
        if failures:
            raise failures.pop(0)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return aiohttp.ClientSession(trace_configs=[trace])


class TestShipperResilience:
    def test_an_unexpected_error_does_not_stop_shipping(self, tmp_path):
        """A bug-shaped exception from a send is logged and the batch tried again; all arrive in order."""

        async def main():
            async with ScriptedBackend() as backend, _bug_session([ValueError("a bug"), RuntimeError("x")]) as s:
                run = await ship_all(spool_with(tmp_path, 3), backend, session=s)
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ALL_THREE
        assert run.metrics.value("alpacon_agent_ship_retries_total", {"reason": "internal_error"}) == 2

    def test_an_unreadable_spooled_body_is_dead_lettered_not_retried(self, tmp_path):
        """A stored body that cannot be inflated does not block the batches behind it: it goes
        to the dead letters, as stored, with the reason."""

        async def main():
            async with ScriptedBackend() as backend:
                run = await ship_all(spool_with(tmp_path, 3, corrupt=1), backend, compression="none")
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ["ev-0000-0000", "ev-0002-0000"]
        dead = run.spool.dead_letters()
        assert [d["batch_id"] for d in dead] == ["b-00000001"]
        assert "cannot be read" in dead[0]["reason"]

    def test_an_unreadable_body_sent_as_gzip_is_refused_by_the_backend_and_dead_lettered(self, tmp_path):
        """With gzip on, the damaged body goes out as it is stored; the backend's 400 dead-letters it."""

        async def main():
            async with ScriptedBackend() as backend:
                run = await ship_all(spool_with(tmp_path, 3, corrupt=1), backend)
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ["ev-0000-0000", "ev-0002-0000"]
        dead = run.spool.dead_letters()
        assert [(d["batch_id"], d["status"]) for d in dead] == [("b-00000001", 400)]


class TestBackoff:
    def test_retry_after_zero_still_backs_off(self, tmp_path):
        """Retry-After is honoured as a floor: "0" does not cut the exponential backoff short."""

        async def main():
            async with ScriptedBackend([(429, {"Retry-After": "0"})] * 4) as backend:
                run = await ship_all(spool_with(tmp_path, 1), backend, record_waits=True,
                                     backoff_initial_s=0.5, backoff_max_s=60)
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ["ev-0000-0000"] and len(backend.seen) == 5
        assert len(run.waits) == 4
        assert [w >= 0.5 * 2**i for i, w in enumerate(run.waits)] == [True] * 4  # 0.5, 1, 2, 4 at least
        assert run.metrics.value("alpacon_agent_ship_retries_total", {"reason": "429"}) == 4

    def test_retry_after_is_waited_and_its_absence_leaves_the_backoff(self, tmp_path):
        """A 429 asking for 30 s is waited 30 s; a 503 without Retry-After waits the short backoff."""

        async def main():
            answers = [(429, {"Retry-After": "30"}), (503, {})]
            async with ScriptedBackend(answers) as backend:
                run = await ship_all(spool_with(tmp_path, 1), backend, record_waits=True,
                                     backoff_initial_s=0.5, backoff_max_s=60)
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ["ev-0000-0000"]
        assert run.waits[0] >= 30.0
        assert run.waits[1] < 2.0
        assert run.metrics.value("alpacon_agent_ship_retries_total", {"reason": "503"}) == 1

    def test_connection_refused_is_retried_until_the_backend_is_up(self, tmp_path):
        """No answer at all (nothing listening) is retried; once a backend listens, the batch is stored."""

        async def main():
            backend = ScriptedBackend()
            await backend.start()
            port = backend.port
            await backend.stop()  # the port is known and nothing listens on it
            starting: list[asyncio.Task[None]] = []

            def on_wait(_: float) -> None:  # during the third wait, the backend comes up
                if len(waits) == 3 and not starting:
                    starting.append(asyncio.get_running_loop().create_task(backend.start(port)))

            waits: list[float] = []
            try:
                run = await ship_all(spool_with(tmp_path, 1), backend, record_waits=True,
                                     on_wait=lambda s: (waits.append(s), on_wait(s)))
            finally:
                await backend.stop()
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ["ev-0000-0000"]
        assert run.metrics.value("alpacon_agent_ship_retries_total", {"reason": "no_answer"}) >= 3


class TestDecisions:
    def test_401_pauses_reloads_the_token_and_resumes(self, tmp_path):
        """401 pauses shipping for auth_pause_s and keeps the data; the token file is read again,
        and once the backend accepts the new token the batch is stored and the pause lifted."""
        token = tmp_path / "token"
        token.write_text("old-token")

        def auth(doc, request):
            return (200, {}) if request.headers.get("Authorization") == "Bearer new-token" else (401, {})

        def rotate(_: float) -> None:
            token.write_text("new-token")

        async def main():
            async with ScriptedBackend([auth, auth]) as backend:
                run = await ship_all(spool_with(tmp_path / "s", 1), backend, record_waits=True, on_wait=rotate,
                                     token_file=str(token), auth_pause_s=45)
            return backend, run

        backend, run = asyncio.run(main())
        assert [s.status for s in backend.seen] == [401, 200]
        assert run.waits == [45]
        assert backend.stored_ids() == ["ev-0000-0000"]
        assert run.shipper.paused_reason is None
        assert run.metrics.value("alpacon_agent_shipping_paused") == 0
        assert run.metrics.value("alpacon_agent_ship_retries_total", {"reason": "auth"}) == 1

    def test_413_splits_until_parts_fit_and_keeps_order(self, tmp_path):
        """A backend taking at most 3 events per request: a 10-event batch is halved until each
        part fits; every event arrives once, in order, and nothing is dead-lettered."""

        def at_most_3(doc, request):
            return (413, {}) if doc and len(doc["events"]) > 3 else (200, {})

        async def main():
            async with ScriptedBackend([at_most_3] * 50) as backend:
                run = await ship_all(spool_with(tmp_path, 2, events_per_batch=10), backend)
            return backend, run

        backend, run = asyncio.run(main())
        expected = [f"ev-{b:04d}-{i:04d}" for b in range(2) for i in range(10)]
        assert backend.stored_ids() == expected
        assert run.spool.dead_letters() == []
        assert 413 in [s.status for s in backend.seen]

    def test_400_dead_letters_with_the_reason_and_the_next_batch_goes_on(self, tmp_path):
        """Other 4xx: the batch goes to the dead letters with the status and the backend's words."""

        async def main():
            async with ScriptedBackend([(400, {})]) as backend:
                run = await ship_all(spool_with(tmp_path, 3), backend)
            return backend, run

        backend, run = asyncio.run(main())
        assert backend.stored_ids() == ALL_THREE[1:]
        dead = run.spool.dead_letters()
        assert [(d["batch_id"], d["status"]) for d in dead] == [("b-00000000", 400)]
        assert "scripted answer" in dead[0]["reason"]
        assert run.shipper.permanent_failures and "b-00000000" in run.shipper.permanent_failures[0]


class TestEviction:
    def test_a_batch_read_ahead_then_evicted_is_not_sent(self, tmp_path):
        """Bulk batches read ahead of the one being retried, then evicted for audit data while they
        wait, are not delivered: they were counted as evicted, and an audit trail that says
        "evicted" of data the backend holds is wrong. The audit batch and the bulk batches left
        in the spool are delivered."""
        import orjson

        from agent.events import PRIORITY_AUDIT, PRIORITY_BULK
        from agent.spool import NewBatch, Spool

        def batch(name: str, priority: int, kind: str) -> NewBatch:
            events = [{"id": f"ev-{name}", "kind": kind, "pad": "x" * 900}]
            return NewBatch(f"b-{name}", priority, 1, {kind: 1}, orjson.dumps(events))

        probe = len(batch("probe", PRIORITY_BULK, "system_log").body)
        spool = Spool(tmp_path, probe * 5)
        for i in range(5):
            spool.append([batch(f"log-{i}", PRIORITY_BULK, "system_log")])
        evicted: list[object] = []

        def on_wait(_: float) -> None:  # the first send failed: audit data arrives, the spool is full
            if not evicted:
                big = NewBatch("b-audit", PRIORITY_AUDIT, 1, {"user_activity": 1},
                               orjson.dumps([{"id": "ev-audit", "kind": "user_activity", "pad": "x" * (probe * 2)}]))
                evicted.extend(spool.append([big]))

        async def main():
            async with ScriptedBackend(answers=[(503, {})]) as backend:
                run = await ship_all(spool, backend, record_waits=True, on_wait=on_wait)
            return backend, run

        backend, run = asyncio.run(main())
        gone = {e.batch_id for e in evicted}  # type: ignore[attr-defined]
        assert gone >= {"b-log-0", "b-log-1", "b-log-2"}, gone
        stored = backend.stored_ids()
        assert not {f"ev-{b.removeprefix('b-')}" for b in gone} & set(stored), stored
        assert "ev-audit" in stored and "ev-log-4" in stored
        assert spool.evictions == len(gone)
