"""The wire document and the deflated form batches are spooled in (agent.wire)."""

from __future__ import annotations

import gzip
import os
import zlib

import orjson
import pytest

from agent import wire

AGENT = orjson.dumps({"id": "a-1", "server": "web-01", "hostname": "web-01", "version": "0.1.0"})
BODIES = [
    b"[]",
    orjson.dumps([{"id": "e1", "kind": "system_log", "data": {"message": "caf\u00e9 \u2603 \"q\" \\ \x01"}}]),
    orjson.dumps([{"id": f"e{i}", "data": {"message": os.urandom(64).hex()}} for i in range(3000)]),
    orjson.dumps([{"id": f"e{i}", "data": {"message": "x" * 70000}} for i in range(20)]),
]


class TestWire:
    @pytest.mark.parametrize("level", [1, 6, 9])
    @pytest.mark.parametrize("body", BODIES, ids=["empty", "text", "incompressible", "repetitive"])
    def test_gzip_of_a_packed_body_is_the_document(self, body: bytes, level: int) -> None:
        """gzip_document, built from the spooled deflate without inflating it, is one gzip member
        holding exactly the document — as zlib, the gzip module and a streaming reader see it."""
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

    def test_every_attempt_has_its_own_sent_at(self) -> None:
        packed = wire.pack(BODIES[1], 1)
        a = orjson.loads(gzip.decompress(wire.gzip_document(AGENT, "b", packed, 1, "2026-11-26T20:00:00.000Z")))
        b = orjson.loads(gzip.decompress(wire.gzip_document(AGENT, "b", packed, 1, "2026-11-26T20:00:01.000Z")))
        assert (a["sent_at"], b["sent_at"]) == ("2026-11-26T20:00:00.000Z", "2026-11-26T20:00:01.000Z")
        assert a["events"] == b["events"]

    def test_bad_stored_forms_raise_clear_errors(self) -> None:
        with pytest.raises(ValueError, match="unknown batch body codec"):
            wire.unpack("lz4", b"...")
        with pytest.raises(zlib.error):
            wire.unpack(wire.CODEC_DEFLATE, b"\xff\xff not deflate")
        with pytest.raises(ValueError, match="deflate-packed"):
            wire.gzip_document(AGENT, "b", wire.Packed(wire.CODEC_JSON, b"[]", 2, 0), 1)
