"""A finished asciicast file as websh_recording events: whole lines per chunk, capped, schema-valid."""

from __future__ import annotations

import json
from pathlib import Path

from agent.schema import validate_event
from collectors.websh.recording import CHUNK_BYTES, recording_messages


def cast(path: Path, n: int, width: int = 100) -> bytes:
    lines = [json.dumps({"version": 2, "width": 80, "height": 24})]
    lines += [json.dumps([i / 10, "o", f"{i:06d} " + "x" * width]) for i in range(n)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


class TestRecordingMessages:
    def test_chunks_are_whole_lines_and_join_back(self, tmp_path: Path) -> None:
        """Chunks end at line ends, stay under the cap, number from 0, and join to the file."""
        data = cast(tmp_path / "s.cast", 5000)
        msgs = recording_messages(tmp_path / "s.cast", "sess-1")
        assert len(msgs) > 1
        assert [m["data"]["seq"] for m in msgs] == list(range(len(msgs)))
        assert all(len(m["data"]["data"].encode()) <= CHUNK_BYTES for m in msgs)
        assert all(m["data"]["data"].endswith("\n") for m in msgs)
        assert "".join(m["data"]["data"] for m in msgs).encode() == data
        assert [m["data"]["final"] for m in msgs] == [False] * (len(msgs) - 1) + [True]
        assert len({m["id"] for m in msgs}) == len(msgs)
        for m in msgs:
            validate_event({"id": m["id"], "kind": m["kind"], "ts": m["ts"], "server": "s", "data": m["data"]})

    def test_ids_are_stable_across_runs(self, tmp_path: Path) -> None:
        """Shipping the same recording again gives the same ids (a replay is stored once)."""
        cast(tmp_path / "s.cast", 10)
        a = [m["id"] for m in recording_messages(tmp_path / "s.cast", "sess-1")]
        b = [m["id"] for m in recording_messages(tmp_path / "s.cast", "sess-1")]
        assert a == b and a != [m["id"] for m in recording_messages(tmp_path / "s.cast", "sess-2")]

    def test_over_the_cap_ships_whole_lines_and_says_truncated(self, tmp_path: Path) -> None:
        """A recording over max_bytes ships whole lines up to the cap; its last chunk says so."""
        cast(tmp_path / "big.cast", 2000)
        msgs = recording_messages(tmp_path / "big.cast", "sess-1", max_bytes=50_000)
        text = "".join(m["data"]["data"] for m in msgs)
        assert len(text.encode()) <= 50_000 and text.endswith("\n")
        assert msgs[-1]["data"].get("truncated") is True and all("truncated" not in m["data"] for m in msgs[:-1])

    def test_missing_empty_and_hostile_files(self, tmp_path: Path) -> None:
        """No file, an empty file: nothing; invalid UTF-8 and a line longer than a chunk still ship."""
        assert recording_messages(tmp_path / "none.cast", "s") == []
        (tmp_path / "empty.cast").write_bytes(b"")
        assert recording_messages(tmp_path / "empty.cast", "s") == []
        (tmp_path / "odd.cast").write_bytes(b"\xff\xfe" + b"y" * (CHUNK_BYTES * 2) + b"\n")
        msgs = recording_messages(tmp_path / "odd.cast", "s")
        assert len(msgs) == 3 and all(len(m["data"]["data"].encode()) <= CHUNK_BYTES + 8 for m in msgs)
