"""The compiled syslog block reader (``collectors/syslog/_lines.c``) reads each line exactly as the
block regex does: it takes the lines ``BLOCK_ISO`` matches, with the same header (zone, host and
tag) and the same message, and refuses the others. Lines are made near the grammar's edges: the
tag's optional parts in every order, runs at the 63/256 limits, fractions of 0-11 digits, zones
that almost are, non-ASCII and control bytes where a class must stop."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from agent.pipeline.redact import Redactor
from collectors.syslog import compiled
from collectors.syslog.bulk import _HEADER, BLOCK_ISO, StampCache
from tests.support import need

PIECES = [" ", "  ", "-- ", " -- ", "[", "]", "(", ")", ":", ": ", "1", "1.2", "v", "app", "pid", "é", "\t",
          "x" * 63, "x" * 64, "p" * 256, "p" * 257, "9" * 32, "9" * 33, "~", "_", "+", "*", "'", "\x1f"]
FRACS = st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9).map(lambda d: "." + d),
                  st.text("0123456789", max_size=11).map(lambda d: "." + d))
ZONES = st.one_of(st.sampled_from(["Z", "+00:00", "-05:30"]), st.sampled_from(["+0000", "", "z", "+00:0", "+00:00:"]))
RESTS = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
HOSTS = st.one_of(st.sampled_from(["web-01", "h" * 256, "h" * 257, "é", "", "a b"]), RESTS)


def _read(line: bytes) -> tuple[Any, list[bytes]]:
    """What the compiled reader makes of one line, and the headers it asked Python about."""
    read = compiled.compiled_block_reader()
    need(read is not None, "the compiled syslog reader (pip install -e .)")
    assert read is not None
    stamps = StampCache()
    seconds: dict[bytes, dict[bytes, bytes | None]] = {}
    asked: list[bytes] = []

    def learn_head(head: bytes) -> None:  # the collector's own, which keeps a plain pid apart
        asked.append(head)
        stamps.learn_head(head, lambda prog: False)

    def learn_second(stamp: bytes, zone: bytes) -> None:
        seconds.setdefault(zone, {})[stamp] = stamp + b"."

    r = Redactor()
    triggers = r.trigger_words()
    assert triggers is not None
    spec = (b'{"id":"x-', b'Z","data":{', 1 << 20, *triggers, ())
    return read(line, 0, spec, stamps.c_heads, seconds, learn_head, learn_second), asked


@given(FRACS, ZONES, HOSTS, RESTS, RESTS)
@example("", "+00:00", "web-01", "app 1" + "v" * 63 + ":", " msg")
@example(".123456789", "Z", "h", "-- root[2]:", "x")
@example(".1234567890", "Z", "h", "app:", "x")
@example("", "Z", "h", "p" * 256 + ":", "x")
@example("", "Z", "h" * 256, "app[" + "9" * 32 + "] (s):", "x")
@example("", "-05:30", "h", "app[" + "9" * 33 + "]:", "x")
@example("", "Z", "h", "app[0]:", "x")
@example("", "Z", "h", "app[07]:", "x")
@example("", "Z", "h", "app 1.2[123456789] (s[1]):", "x")
@example("", "Z", "h", "app[1234567890]:", "x")
def test_reads_what_the_block_regex_reads(frac: str, zone: str, host: str, tag: str, message: str) -> None:
    line = f"2026-11-26T21:22:30{frac}{zone} {host} {tag}{message}".encode() + b"\n"
    m = BLOCK_ISO.match(line)
    got, asked = _read(line)
    if m is None or m.end() != len(line):
        assert got is None, line
        return
    assert got is not None, line
    events = got[0]
    assert asked == [m.group(3)], (line, asked)
    message_json = orjson.dumps(m.group(4).decode())
    assert events[0].endswith(b',"message":' + message_json + b"}}"), (line, events[0])
    # the header's fields as the line parser's cache makes them, the pid in its place
    h = _HEADER.fullmatch(m.group(3))
    assert h is not None
    frag = StampCache().header(*h.groups()[1:])[0]
    assert b'Z","data":{' + frag + b',"message":' in events[0], (line, events[0], frag)
