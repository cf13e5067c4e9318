"""Fuzzing the spool file the agent finds at start: truncated, overwritten, bit-flipped, in its
database file or its WAL. Opening it never raises; what it then holds is, batch by batch, either
what was written or visibly damaged (a body that fails its decode and CRC check) — never a batch
silently different — and the checkpoints are dropped whenever batches were lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.spool import NewBatch, Spool
from agent.spool_recovery import body_intact
from agent.typing import Checkpoint

N_BATCHES = 40


def _make(d: Path, leave_wal: bool) -> dict[str, bytes]:
    spool = Spool(d, 1 << 30)
    bodies = {}
    for i in range(N_BATCHES):
        body = orjson.dumps([{"id": f"fuzzed-{i:03d}-{j:02d}", "n": j, "pad": (f"{i}-{j}-" * 200)} for j in range(10)])
        bodies[f"batch-{i:03d}"] = body
        spool.append([NewBatch(f"batch-{i:03d}", 1, 10, {"user_activity": 10}, body).packed(1)],
                     [Checkpoint("src", f"pos-{i}")])
    if leave_wal:  # as after kill -9: the commits still in the WAL, copied while the spool is open
        for name in ("spool.db", "spool.db-wal"):
            shutil.copyfile(d / name, d.parent / f"{d.name}-wal-copy-{name}")
    spool.close()
    if leave_wal:
        for name in ("spool.db", "spool.db-wal"):
            shutil.move(d.parent / f"{d.name}-wal-copy-{name}", d / name)
    return bodies


class Templates(dict):  # type: ignore[type-arg]
    """The spools to damage, by name: (directory, the JSON of each batch)."""

    def __repr__(self) -> str:  # a failing example names the template, not its megabytes
        return f"Templates({sorted(self)})"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    out = Templates()
    for leave_wal in (False, True):
        d = tmp_path_factory.mktemp(f"spool-{'wal' if leave_wal else 'closed'}")
        out["wal" if leave_wal else "closed"] = (d, _make(d, leave_wal))
    return out


damage = st.lists(st.tuples(st.sampled_from(["spool.db", "spool.db-wal"]), st.floats(0, 1),
                            st.sampled_from(["flip", "page", "zero", "truncate"]),
                            st.integers(1, 20_000)), min_size=1, max_size=4)


def _apply(d: Path, damages: list[tuple[str, float, str, int]]) -> None:
    for name, where, how, size in damages:
        path = d / name
        if not path.exists():
            continue
        length = path.stat().st_size
        at = int(where * max(length - 1, 0))
        with open(path, "r+b") as f:
            if how == "truncate":
                f.truncate(at)
                continue
            f.seek(at)
            if how == "flip":
                b = f.read(1)
                f.seek(at)
                f.write(bytes([(b[0] if b else 0) ^ 0xFF]))
            elif how == "page":
                f.write(bytes((at * 7 + i) & 0xFF for i in range(min(size, 16384))))
            else:
                f.write(b"\0" * min(size, 16384))


class TestDamagedSpool:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(["closed", "wal"]), damage)
    def test_a_damaged_spool_opens_and_holds_nothing_silently_wrong(self, templates, tmp_path_factory, which,
                                                                    damages):
        """Any damage: the spool opens; each batch is the one written or fails its check; checkpoints
        are kept only when no batch was lost."""
        src, bodies = templates[which]
        d = tmp_path_factory.mktemp("damaged")
        for f in src.iterdir():
            shutil.copyfile(f, d / f.name)
        _apply(d, damages)
        spool = Spool(d, 1 << 30)
        try:
            batches = spool.pending(10_000)
            for b in batches:
                if b.batch_id in bodies and body_intact(b.codec, b.body, b.n_events, b.raw_bytes, b.crc):
                    assert b.json() == bodies[b.batch_id], f"{b.batch_id} silently changed"
            if spool.recovery is not None and spool.recovery["resume_from_oldest"]:
                assert spool.checkpoints() == {}
            spool.append([NewBatch("after-the-damage", 1, 1, {"user_activity": 1}, b"[{}]")])
        finally:
            spool.close()
