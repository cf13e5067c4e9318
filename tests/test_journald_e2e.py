"""journald end to end: a live namespaced journald, a real agent process and the reference receiver."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter

import orjson

from tests.parts import LiveJournald
from tests.support import wait_until

SEQ = re.compile(r"src=(\S+) seq=(\d+)")
WRITER = """\
import sys, time, orjson
from systemd import journal
pause = float(sys.argv[1]) if len(sys.argv) > 1 else 0
for i, line in enumerate(sys.stdin.buffer):
    f = orjson.loads(line)
    journal.sendv(*[k.encode() + b"=" + (bytes(v) if isinstance(v, list) else str(v).encode())
                    for k, v in f.items()])
    if pause and i % 100 == 99:
        time.sleep(pause)
"""


def _journald_cfg(jd: LiveJournald, idents: list[str], **extra: object) -> dict:
    return {"collectors": {"journald": {"enabled": True, "directory": str(jd.journal_dir),
                                        "start_at": "beginning", "identifiers": idents, **extra}}}


def _sender(jd: LiveJournald, entries: list[dict], pause: float = 0.0) -> subprocess.Popen:
    """A systemd-python writer inside journald's namespace; its pid is the entries' _PID."""
    p = jd.popen([sys.executable, "-c", WRITER, str(pause)], stdin=subprocess.PIPE)
    threading.Thread(target=_feed, args=(p, entries), daemon=True).start()
    return p


def _feed(p: subprocess.Popen, entries: list[dict]) -> None:
    assert p.stdin is not None
    p.stdin.write(b"".join(orjson.dumps({k: list(v) if isinstance(v, bytes) else v for k, v in e.items()})
                           + b"\n" for e in entries))
    p.stdin.close()


def _logger(jd: LiveJournald, tag: str, prio: str, lines: list[str]) -> subprocess.Popen:
    p = jd.popen(["logger", "--socket", "/run/systemd/journal/dev-log", "--socket-errors=on",
                  "-t", tag, "-p", prio], stdin=subprocess.PIPE)
    assert p.stdin is not None
    p.stdin.write("".join(m + "\n" for m in lines).encode())
    p.stdin.close()
    return p


def _by_seq(events: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for e in events:
        m = SEQ.search(e["data"]["message"])
        if m:
            out.setdefault((m.group(1), int(m.group(2))), []).append(e)
    return out


def _internal(agent, name: str) -> float:
    """The agent's ``alpacon_agent_internal_events_total{name=…}`` summed over sources."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(agent.metrics_text()) for s in fam.samples
               if s.name == "alpacon_agent_internal_events_total" and s.labels.get("name") == name)


def _logs(receiver) -> list[dict]:
    return receiver.events(kind="system_log")


class TestJournaldEndToEnd:
    def test_fifty_thousand_lines_from_several_writers(self, jd, receiver, agent_factory):
        """50,000 lines from logger, journal.send, binary, multi-line and 100 KB writers arrive once,
        with the right program, pid, level and message."""
        agent = agent_factory(receiver, **_journald_cfg(
            jd, ["w-logger", "w-send", "w-bin", "w-ml", "w-big"], max_message_bytes=131072),
            batch={"max_events": 1000, "max_wait_ms": 100})
        agent.start()
        big = "x" * 100_000
        prios = ["emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"]
        writers = {
            "logger": (_logger(jd, "w-logger", "user.warning", [f"src=logger seq={i}" for i in range(20_000)]),
                       "w-logger"),
            "send": (_sender(jd, [{"MESSAGE": f"src=send seq={i}", "SYSLOG_IDENTIFIER": "w-send",
                                   "PRIORITY": i % 8} for i in range(20_000)]), "w-send"),
            "bin": (_sender(jd, [{"MESSAGE": f"src=bin seq={i} ".encode() + b"\x00\xff\x01",
                                  "SYSLOG_IDENTIFIER": "w-bin", "PRIORITY": 6} for i in range(5_000)]), "w-bin"),
            "ml": (_sender(jd, [{"MESSAGE": f"src=ml seq={i}\nsecond line\n\tthird", "SYSLOG_IDENTIFIER": "w-ml",
                                 "PRIORITY": 5} for i in range(4_990)]), "w-ml"),
            "big": (_sender(jd, [{"MESSAGE": f"src=big seq={i} {big}", "SYSLOG_IDENTIFIER": "w-big",
                                  "PRIORITY": 4} for i in range(10)]), "w-big"),
        }
        for p, _ in writers.values():
            assert p.wait(120) == 0
        wait_until(lambda: len(_logs(receiver)) >= 50_000, 180, interval=0.5, what="50,000 lines")
        agent.wait_drained()
        events = _logs(receiver)
        assert len(events) == 50_000
        by = _by_seq(events)
        pids = {src: p.pid for src, (p, _) in writers.items()}
        expect = {"logger": 20_000, "send": 20_000, "bin": 5_000, "ml": 4_990, "big": 10}
        for src, n in expect.items():
            for i in range(n):
                got = by.get((src, i), [])
                assert len(got) == 1, f"{src} seq={i} arrived {len(got)} times"
                d = got[0]["data"]
                assert d["program"] == writers[src][1] and d["pid"] == pids[src], (src, i, d)
                if src == "logger":
                    assert d["level"] == "warning" and d["message"] == f"src=logger seq={i}"
                elif src == "send":
                    assert d["level"] == prios[i % 8] and d["message"] == f"src=send seq={i}"
                elif src == "bin":
                    assert d["message"] == f"src=bin seq={i} \x00\ufffd\x01"
                elif src == "ml":
                    assert d["level"] == "notice" and d["message"] == f"src=ml seq={i}\nsecond line\n\tthird"
                else:
                    assert d["level"] == "warning" and d["message"] == f"src=big seq={i} {big}"
                    assert "truncated" not in d

    def test_sigkill_three_times_while_writing(self, jd, receiver, agent_factory):
        """SIGKILL three times while journald is written to: after catching up, every line is there once."""
        n = 20_000
        agent = agent_factory(receiver, **_journald_cfg(jd, ["w-kill"]))
        agent.start()
        writer = _sender(jd, [{"MESSAGE": f"src=kill seq={i}", "SYSLOG_IDENTIFIER": "w-kill"} for i in range(n)],
                         pause=0.03)
        for k in range(3):
            before = len(receiver.ids("system_log"))
            wait_until(lambda b=before: len(receiver.ids("system_log")) > b + 500, 60, interval=0.1,
                       what=f"progress before kill {k + 1}")
            assert writer.poll() is None, "the writer finished before kill {k + 1}"
            agent.kill()
            agent.start()
        assert writer.wait(180) == 0
        wait_until(lambda: len(receiver.ids("system_log")) >= n, 120, interval=0.5, what="catch up")
        agent.wait_drained()
        events = _logs(receiver)
        counts = Counter(int(SEQ.search(e["data"]["message"]).group(2)) for e in events)
        assert len(events) == n
        assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}

    def test_rotate_and_vacuum_while_stopped(self, jd, receiver, agent_factory):
        """Rotated and vacuumed below the saved cursor while stopped: the agent resumes at the oldest
        entry after it (saved cursor wins over start_at=end) and reports the gap."""
        agent = agent_factory(receiver, **_journald_cfg(jd, ["w-vac"]))
        agent.start()
        jd.logger(*[f"src=vac seq={i}" for i in range(0, 1000)], tag="w-vac")
        wait_until(lambda: len(_logs(receiver)) >= 1000, 60, interval=0.2, what="first 1000")
        agent.wait_drained()
        assert agent.stop() == 0
        jd.logger(*[f"src=vac seq={i}" for i in range(1000, 2000)], tag="w-vac")  # lost with file 1
        jd.sync()
        jd.rotate()
        jd.logger(*[f"src=vac seq={i}" for i in range(2000, 3000)], tag="w-vac")
        jd.sync()
        jd.rotate()
        first = jd.archived_files()[0]
        jd.vacuum_files(keep=2)  # journalctl --vacuum-files: the oldest archive, with the saved cursor, goes
        assert not first.exists() and len(jd.archived_files()) == 1
        jd.logger(*[f"src=vac seq={i}" for i in range(3000, 3100)], tag="w-vac")
        jd.sync()
        cfg = dict(agent.config)
        cfg["collectors"]["journald"]["start_at"] = "end"
        agent.write_config(cfg)
        agent.start()
        wait_until(lambda: len(_logs(receiver)) >= 2100, 60, interval=0.2, what="resumed lines")
        agent.wait_drained()
        seqs = sorted(int(SEQ.search(e["data"]["message"]).group(2)) for e in _logs(receiver))
        assert seqs == list(range(1000)) + list(range(2000, 3100))
        assert _internal(agent, "journal_gap") == 1
        log = agent.log_path.read_text()
        assert "journal_gap" in log and "entries_lost" in log
