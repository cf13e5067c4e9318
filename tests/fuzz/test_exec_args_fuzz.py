"""Fuzzing ``alpacon-agent exec --at/--in`` through the real parser (agent.cli.main) and request builder.

Invariants: any text either makes argparse exit 2, or gives a request whose ``at``/``in_s`` is a finite
number, or a ValueError (which ``exec`` prints and exits 2 on) — nothing else escapes. Times that are
valid come out right: epoch seconds as given, ``HH:MM[:SS]`` as the next such time, ISO 8601 with an
offset as that instant.
"""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from agent.cli.main import build_parser
from collectors.commands.client import build_request, parse_at

PARSER = build_parser()


def request(*argv: str) -> dict[str, Any] | str:
    """The request ``exec ARGV -- true`` builds; "usage" when argparse refuses, "error" on a ValueError."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = PARSER.parse_args(["exec", *argv, "--", "true"])
    except SystemExit as exc:
        assert exc.code == 2
        return "usage"
    try:
        return build_request(args)
    except ValueError as exc:
        assert str(exc), "an error without a message"
        return "error"


WHEN_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789:.-+TZ eE_", max_size=30),
    st.from_regex(r"\A\d{1,3}:\d{1,3}(:\d{1,3})?\Z"),
    st.datetimes().map(lambda d: d.isoformat()),
    st.floats().map(repr),
)


class TestExecWhenFuzz:
    @given(text=WHEN_TEXT)
    @example(text="")  # found: an empty --at was dropped and the command ran at once
    @example(text="0001-01-01")  # naive local time before the epoch's range: "year 0 is out of range"
    @example(text="nan")
    @example(text="-inf")
    @example(text="1e400")
    @example(text="24:00")
    @example(text="9999-12-31T23:59:59-23:59")
    @example(text="\u0661\u0662:\u0663\u0660")  # Arabic-Indic digits
    @example(text="-5")
    @example(text="--")
    def test_at_never_escapes(self, text: str) -> None:
        """Any --at text: a usage error, a clear ValueError, or a finite time."""
        out = request("--at", text)
        if isinstance(out, dict):
            assert "at" in out and math.isfinite(out["at"]), out

    @given(text=st.one_of(st.text(max_size=30), st.floats().map(repr), st.integers().map(str)))
    @example(text="nan")
    @example(text="inf")
    @example(text="1e309")
    @example(text="-0")
    def test_in_never_escapes(self, text: str) -> None:
        """Any --in text: a usage error, a clear ValueError, or a finite number of seconds."""
        out = request("--in", text)
        if isinstance(out, dict):
            assert math.isfinite(out["in_s"]) and out["in_s"] == float(text), out

    @given(at=WHEN_TEXT, in_s=st.floats(allow_nan=False).map(repr))
    def test_at_and_in_together_is_a_usage_error(self, at: str, in_s: str) -> None:
        assume(not at.startswith("-"))  # argparse reads "-…" as an option: a usage error anyway
        assert request("--at", at, "--in", in_s) == "usage"

    @given(value=st.floats(allow_nan=False, allow_infinity=False))
    def test_epoch_seconds_as_given(self, value: float) -> None:
        assert parse_at(repr(value)) == value

    @given(h=st.integers(0, 23), m=st.integers(0, 59), s=st.none() | st.integers(0, 59),
           now=st.floats(0, 4_000_000_000))
    def test_clock_time_is_the_next_one(self, h: int, m: int, s: int | None, now: float) -> None:
        """HH:MM[:SS] is the next such local time: after now, at most a day (and a DST hour) later."""
        text = f"{h:02d}:{m:02d}" + ("" if s is None else f":{s:02d}")
        when = parse_at(text, now=now)
        assert now < when <= now + 86_400 + 3_600
        if not time.daylight:  # without DST every local time exists once: it is the asked one
            t = time.localtime(when)
            assert (t.tm_hour, t.tm_min, t.tm_sec) == (h, m, s or 0)

    @given(dt=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                           timezones=st.sampled_from([UTC, timezone(timedelta(hours=9)),
                                                      timezone(timedelta(hours=-23, minutes=-59))])))
    def test_iso_with_offset_is_that_instant(self, dt: datetime) -> None:
        assert parse_at(dt.isoformat()) == pytest.approx(dt.timestamp(), abs=1e-6)
        if dt.tzinfo is UTC:
            assert parse_at(dt.isoformat().replace("+00:00", "Z")) == pytest.approx(dt.timestamp(), abs=1e-6)


def test_empty_at_is_refused_by_the_command() -> None:
    """The bug the fuzzer found, through the installed command: ``exec --at ""`` exits 2 saying why,
    before it reaches the agent, instead of running the command at once."""
    cli = Path(sys.executable).parent / "alpacon-agent"
    r = subprocess.run([str(cli), "exec", "--at", "", "--socket", "/nonexistent/hook.sock", "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a time: ''" in r.stderr, r.stderr
