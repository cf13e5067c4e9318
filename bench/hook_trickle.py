"""A hostile hook producer: one 1 MB message trickled in 100-byte pieces.

Prints the agent's CPU seconds spent on it beside the CPU seconds for the same message sent
in one piece, measured in the same run. A line-buffer that re-copies or re-searches what it
already holds makes the ratio grow with the square of the message size.

    .venv/bin/python bench/hook_trickle.py [--bytes 1000000] [--piece 100]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import AgentProcess, agent_config  # noqa: E402


def send(sock_path: str, data: bytes, piece: int, pause: float = 0.0) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    for i in range(0, len(data), piece):
        s.sendall(data[i:i + piece])
        if pause:
            time.sleep(pause)  # so that the agent reads the pieces one by one
    answer = s.makefile("rb").readline()
    s.close()
    return json.loads(answer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bytes", type=int, default=1_000_000)
    ap.add_argument("--piece", type=int, default=100)
    ap.add_argument("--pause", type=float, default=0.0001, help="seconds between pieces")
    args = ap.parse_args()
    msg = {"kind": "system_log", "data": {"program": "x", "level": "info", "message": "A" * args.bytes}}
    data = json.dumps(msg).encode() + b"\n"
    with tempfile.TemporaryDirectory(prefix="bench-trickle-") as tmp:
        cfg = agent_config(Path(tmp), None, hook={"max_message_bytes": 2 * args.bytes},
                           sink={"type": "file", "path": f"{tmp}/out.jsonl", "token_file": None})
        agent = AgentProcess(Path(tmp), cfg).start()
        try:
            p = psutil.Process(agent.proc.pid)
            c0 = sum(p.cpu_times()[:2])
            assert send(agent.socket, data, len(data))["status"] == "ok"
            c1 = sum(p.cpu_times()[:2])
            assert send(agent.socket, data, args.piece, args.pause)["status"] == "ok"
            c2 = sum(p.cpu_times()[:2])
        finally:
            agent.stop()
    whole, trickled = c1 - c0, c2 - c1
    print(f"message: {len(data):,} bytes; trickled in {args.piece}-byte pieces")
    print(f"agent CPU, sent whole:  {whole:.3f} s")
    print(f"agent CPU, trickled:    {trickled:.3f} s")
    print(f"ratio trickled / whole: {trickled / max(whole, 0.001):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
