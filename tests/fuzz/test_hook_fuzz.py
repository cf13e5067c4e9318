"""Fuzzing the hook API's input boundary: any bytes a producer sends get one clear answer.

Two levels: the message functions (``agent.hookmsg``) on any bytes and any JSON, and the running
agent's socket, where every line is answered with a status and, unless ``ok``, a reason, and the
connection stays open for the next one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.events import KINDS, parse_ts
from agent.hookclient import HookClient
from agent.hookmsg import event_from_emit, parse_message
from agent.schema import validate_data
from tests.harness import AgentProcess, agent_config

STATUSES = {"ok", "invalid", "busy", "error"}

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=40)

#: emits that are nearly right: a real kind, fields of the right names with values of any shape
near_emit = st.fixed_dictionaries(
    {"kind": st.sampled_from([*KINDS, "nonsense", ""]), "data": st.dictionaries(
        st.sampled_from(["user", "action", "result", "program", "level", "message", "details", "path", "size",
                         "status", "line", "shell", "session_id", "seq", "command", "cpu", "x"]),
        json_value, max_size=8)},
    optional={"ts": json_value | st.sampled_from(["2026-11-26T20:00:00.123Z", "yesterday", "9999-99-99"]),
              "id": json_value | st.text(alphabet="abc123._:-/", min_size=0, max_size=140),
              "ref": json_value, "op": st.sampled_from(["emit", "exec", "nonsense"]) | json_value},
)


def _deep(depth: int, kind: str) -> bytes:
    opener, closer = (b"[", b"]") if kind == "list" else (b'{"k":', b"}")
    return b'{"kind":"user_activity","data":{"details":' + opener * depth + b"1" + closer * depth + b"}}"


class TestMessageFunctions:
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000))
    def test_any_bytes_parse_or_are_refused(self, raw):
        """Any bytes: a message object or a reason string, never an exception."""
        out = parse_message(raw)
        assert isinstance(out, dict | str)
        if isinstance(out, str):
            assert out

    @settings(max_examples=300, deadline=None)
    @given(near_emit | st.dictionaries(st.text(max_size=10), json_value, max_size=6))
    def test_any_object_is_an_event_or_a_reason(self, msg):
        """Any object: a schema-valid event or a reason; never an exception."""
        out = event_from_emit(msg, {"source": "hook", "uid": 0, "gid": 0, "pid": 1, "user": "root"})
        if isinstance(out, str):
            assert out and "\n" not in out[:1]
            return
        assert out["kind"] in KINDS
        validate_data(out["kind"], out["data"])
        parse_ts(out["ts"])

    @settings(max_examples=60, deadline=None)
    @given(st.integers(min_value=1, max_value=200_000), st.sampled_from(["list", "dict"]))
    def test_any_depth_is_measured_without_recursion(self, depth, kind):
        """Nesting of any depth is refused past the cap (or parsed under it), without a RecursionError."""
        out = parse_message(_deep(depth, kind))
        if depth + 2 > 32:
            assert out == "nested deeper than 32 levels"
        else:
            assert isinstance(out, dict)


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for every example (no backend: accepted events stay spooled)."""
    d: Path = tmp_path_factory.mktemp("hookfuzz")
    a = AgentProcess(d, agent_config(d, None, hook={"max_message_bytes": 4096}))
    a.start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def fuzz_client(fuzz_agent: AgentProcess) -> Iterator[HookClient]:
    with HookClient(fuzz_agent.socket, timeout=20) as c:
        yield c


line_bytes = st.binary(min_size=1, max_size=6000).map(lambda b: b.replace(b"\n", b" ")).filter(
    lambda b: bool(b.strip()))
json_lines = (near_emit | json_value).map(lambda v: json.dumps(v).encode())


class TestLiveSocket:
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(line_bytes | json_lines, min_size=1, max_size=8))
    def test_every_line_gets_one_clear_answer(self, fuzz_agent, fuzz_client, lines):
        """Pipelined lines of anything: one answer each, in order, a known status, a reason unless
        ok, and the same connection serves the next example."""
        assert fuzz_client._sock is not None
        fuzz_client._sock.sendall(b"\n".join(lines) + b"\n")
        for line in lines:
            answer = fuzz_client._readline()
            assert answer["status"] in STATUSES, answer
            if answer["status"] != "ok":
                assert isinstance(answer.get("reason"), str) and answer["reason"], answer
            else:
                assert isinstance(answer.get("id"), str)
            if len(line) > 4096:
                assert answer["status"] == "invalid" and "larger than 4096" in answer["reason"]

    def test_the_agent_logged_no_traceback(self, fuzz_agent):
        """After all the examples: the agent runs and its log holds no traceback."""
        assert fuzz_agent.proc is not None and fuzz_agent.proc.poll() is None
        log = fuzz_agent.log_path.read_text()
        assert "Traceback" not in log
