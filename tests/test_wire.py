"""The wire document and the deflated form batches are spooled in (agent.wire)."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from datetime import datetime

import orjson
import pytest

from agent import wire
from tests.scripted_backend import ScriptedBackend, ship_all, spool_with

AGENT = orjson.dumps({"id": "a-1", "server": "web-01", "hostname": "web-01", "version": "0.1.0"})
BODIES = [
    b"[]",
    orjson.dumps([{"id": "e1", "kind": "system_log", "data": {"message": "caf\u00e9 \u2603 \"q\" \\ \x01"}}]),
    orjson.dumps([{"id": f"e{i}", "data": {"message": os.urandom(64).hex()}} for i in range(3000)]),
    orjson.dumps([{"id": f"e{i}", "data": {"message": "x" * 70000}} for i in range(20)]),
]


class TestWire:
    def test_isal_is_there(self) -> None:
        """ISA-L's deflate is a dependency where it has wheels (x86-64, arm64)."""
        import platform

        from tests.support import need

        if platform.machine() in ("x86_64", "aarch64"):
            need(wire._fast_zlib is not None, "isal (pip install -e .)")

    @pytest.mark.parametrize("engine", ["isal", "zlib"])
    @pytest.mark.parametrize("level", [1, 6, 9])
    @pytest.mark.parametrize("body", BODIES, ids=["empty", "text", "incompressible", "repetitive"])
    def test_gzip_of_a_packed_body_is_the_document(self, body: bytes, level: int, engine: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """gzip_document, built from the spooled deflate without inflating it, is one gzip member
        holding exactly the document — as zlib, the gzip module and a streaming reader see it —
        with ISA-L's deflate and with zlib's."""
        if engine == "zlib":
            monkeypatch.setattr(wire, "_fast_zlib", None)
        # (without isal, "isal" runs the zlib fallback too; test_isal_is_there says whether it must be there)
        packed = wire.pack(body, level)
        assert wire.unpack(packed.codec, packed.data) == body
        doc = wire.document(AGENT, "b-1", body, "2026-11-26T20:00:00.123Z")
        gz = wire.gzip_document(AGENT, "b-1", packed, level, "2026-11-26T20:00:00.123Z")
        assert zlib.decompress(gz, 16 + zlib.MAX_WBITS) == doc
        assert gzip.decompress(gz) == doc
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert d.decompress(gz) == doc and d.eof and d.unused_data == b""
        parsed = orjson.loads(doc)
        assert parsed["events"] == orjson.loads(body) and parsed["batch_id"] == "b-1" and parsed["schema"] == 1

    @pytest.mark.parametrize("packed", [True, False], ids=["deflate-spooled", "json-spooled"])
    def test_every_attempt_has_its_own_sent_at(self, tmp_path, packed: bool) -> None:
        """The shipper sends a batch twice (the first answered 503): each body carries the time
        of its own attempt, later for the retry, around the same events and batch id."""

        async def main() -> ScriptedBackend:
            async with ScriptedBackend([(503, {})]) as backend:
                await ship_all(spool_with(tmp_path, 1, events_per_batch=3, packed=packed), backend,
                               backoff_initial_s=0.05)
            return backend

        backend = asyncio.run(main())
        first, second = (s.doc for s in backend.seen)
        assert [s.status for s in backend.seen] == [503, 200]
        assert first is not None and second is not None
        assert first["sent_at"] != second["sent_at"]
        assert datetime.fromisoformat(first["sent_at"]) < datetime.fromisoformat(second["sent_at"])
        assert first["events"] == second["events"] and first["batch_id"] == second["batch_id"] == "b-00000000"

    def test_bad_stored_forms_raise_clear_errors(self) -> None:
        with pytest.raises(ValueError, match="unknown batch body codec"):
            wire.unpack("lz4", b"...")
        with pytest.raises(zlib.error):
            wire.unpack(wire.CODEC_DEFLATE, b"\xff\xff not deflate")
        with pytest.raises(ValueError, match="deflate-packed"):
            wire.gzip_document(AGENT, "b", wire.Packed(wire.CODEC_JSON, b"[]", 2, 0), 1)
