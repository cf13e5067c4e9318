"""Fuzzing the reference receiver's ingest boundary: any body an agent (or anyone with the token)
POSTs gets a clear answer — 200 with counts, or a 4xx naming what is wrong — never a 5xx, and
the receiver goes on storing good batches."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.events import KINDS, format_ts
from tests.harness import TOKEN, ReceiverProcess

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=30)


def good_event(i: int) -> dict:
    return {"id": f"fz-{uuid.uuid4().hex}", "kind": "system_log", "ts": format_ts(), "server": "fuzz",
            "data": {"program": "fuzz", "level": "info", "message": f"event {i}"}}


def batch(events: list) -> dict:
    return {"schema": 1, "agent": {"id": "fuzz", "server": "fuzz", "hostname": "fuzz", "version": "0"},
            "batch_id": f"b-{uuid.uuid4().hex}", "sent_at": format_ts(), "events": events}


#: events of a real kind with data of any shape, and envelopes with fields of any shape
near_event = st.fixed_dictionaries(
    {"id": st.text(max_size=140) | json_value, "kind": st.sampled_from([*KINDS, "nonsense"]),
     "ts": st.sampled_from(["2026-11-26T20:00:00.123Z", "yesterday"]) | json_value,
     "server": st.text(max_size=300) | json_value,
     "data": st.dictionaries(st.sampled_from(["program", "level", "message", "pid", "user", "action", "result",
                                              "details", "extra", "x"]), json_value, max_size=6) | json_value})
near_batch = st.builds(lambda evs, over: {**batch(evs), **over}, st.lists(near_event, max_size=5),
                       st.dictionaries(st.sampled_from(["schema", "agent", "batch_id", "sent_at", "events", "x"]),
                                       json_value, max_size=2))


def _deep(depth: int) -> bytes:
    """A batch whose one event's ``data.extra`` nests ``depth`` objects (built as text: no encoder
    recursion)."""
    ev = good_event(0)
    ev["data"]["extra"] = "@@"
    return json.dumps(batch([ev])).encode().replace(b'"@@"', b'{"k":' * depth + b"1" + b"}" * depth)


@pytest.fixture(scope="module")
def fuzz_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    d: Path = tmp_path_factory.mktemp("rxfuzz")
    with ReceiverProcess(d) as rx:
        yield rx


def post(rx: ReceiverProcess, body: bytes, gzipped: bool) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if gzipped:
        body = gzip.compress(body, 1)
        headers["Content-Encoding"] = "gzip"
    req = urllib.request.Request(rx.ingest_url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def check_answer(status: int, answer: dict) -> None:
    assert status in (200, 400, 413, 415), (status, answer)
    if status == 200:
        assert set(answer) == {"stored", "duplicates"}
    else:
        assert isinstance(answer.get("error"), str) and answer["error"], answer


class TestIngestFuzz:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(near_batch | json_value, st.booleans())
    def test_any_json_body_gets_a_clear_answer(self, fuzz_receiver, doc, gzipped):
        """Any JSON document as a batch: 200 or a 4xx with a reason, never a 5xx."""
        status, answer = post(fuzz_receiver, json.dumps(doc).encode(), gzipped)
        check_answer(status, answer)

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=3000), st.booleans())
    def test_any_bytes_get_a_clear_answer(self, fuzz_receiver, raw, gzipped):
        """Any bytes as a body (raw or gzipped): a 4xx with a reason."""
        status, answer = post(fuzz_receiver, raw, gzipped)
        check_answer(status, answer)
        assert status != 200 or raw.strip().startswith(b"{")

    # 1000 found a 500 (the store's orjson.dumps: "Recursion limit reached"); kept as a regression case
    @pytest.mark.parametrize("depth", [40, 1000, 5000])
    def test_deep_nesting_gets_a_clear_answer(self, fuzz_receiver, depth):
        """An event's data nested deep: a clear answer, and the receiver still serves."""
        status, answer = post(fuzz_receiver, _deep(depth), False)
        check_answer(status, answer)

    def test_good_batches_still_stored_after_the_fuzzing(self, fuzz_receiver):
        """After every example above the receiver stores a good batch and its log has no traceback."""
        evs = [good_event(i) for i in range(3)]
        status, answer = post(fuzz_receiver, json.dumps(batch(evs)).encode(), True)
        assert (status, answer) == (200, {"stored": 3, "duplicates": 0})
        assert "Traceback" not in fuzz_receiver.log_path.read_text()
