"""A counting HTTP sink for peers that post JSON lines (Fluent Bit's ``http`` output).

``python bench/line_sink.py PORT``: accepts POST bodies of JSON lines (gzip or not) on any path,
counts the events and the distinct ``seq=<n>`` among them, and answers ``GET /stats`` with
``{"events", "distinct", "duplicates", "done_at"}`` (``done_at``: when ``--expect`` distinct
seqs had arrived).
"""

from __future__ import annotations

import argparse
import gzip
import re
import time

from aiohttp import web

SEQ = re.compile(rb"seq=(\d+)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--expect", type=int, default=0)
    args = ap.parse_args()
    seen: set[bytes] = set()
    stats = {"events": 0, "distinct": 0, "duplicates": 0, "done_at": None}

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        for line in body.splitlines():
            if not line.strip():
                continue
            stats["events"] += 1
            m = SEQ.search(line)
            if m is None:
                continue
            if m.group(1) in seen:
                stats["duplicates"] += 1
            else:
                seen.add(m.group(1))
        stats["distinct"] = len(seen)
        if args.expect and stats["done_at"] is None and len(seen) >= args.expect:
            stats["done_at"] = time.time()
        return web.Response(status=200)

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/stats", get_stats)
    app.router.add_route("*", "/{tail:.*}", ingest)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
