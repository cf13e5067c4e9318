"""One-shot mode: ``alpacon-agent run --once`` reads what the sources have now, ships it, exits."""

from __future__ import annotations

import shutil

from tests.parts import write_journal_file
from tests.support import need


class TestRunOnce:
    def test_backfill_journal_and_syslog_file(self, agent_factory, receiver, tmp_path):
        """Both collectors read to the current end; everything is acknowledged; exit 0; a second run adds nothing."""
        need(shutil.which("/lib/systemd/systemd-journal-remote") is not None
             or shutil.which("systemd-journal-remote") is not None, "systemd-journal-remote")
        jdir = tmp_path / "journal"
        write_journal_file(jdir / "system.journal",
                           [{"MESSAGE": f"journal line {i}", "SYSLOG_IDENTIFIER": "app", "PRIORITY": "6",
                             "_PID": "77"} for i in range(300)])
        log = tmp_path / "syslog"
        log.write_text("".join(f"2026-11-26T20:00:{i % 60:02d}.000000+00:00 web-01 cron[9]: file line {i}\n"
                               for i in range(200)))
        agent = agent_factory(receiver, collectors={
            "journald": {"enabled": True, "directory": str(jdir), "start_at": "beginning"},
            "syslog": {"enabled": True, "paths": [str(log)], "start_at": "beginning"},
        })
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "ok: all events acknowledged" in r.stderr
        rows = receiver.view("system-logs", limit=10000)
        msgs = sorted(x["message"] for x in rows)
        assert msgs == sorted([f"journal line {i}" for i in range(300)] + [f"file line {i}" for i in range(200)])
        # the positions were committed with the batches: a second run finds nothing new
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(receiver.ids("system_log")) == 500
        assert receiver.stats()["duplicates"] == 0

    def test_fails_with_reason_when_backend_refuses(self, agent_factory, receiver, tmp_path):
        """401 from the backend: --once exits non-zero and says why; the data stays spooled."""
        log = tmp_path / "syslog"
        log.write_text("".join(f"Nov 26 20:00:00 web-01 app[1]: line {i}\n" for i in range(10)))
        receiver.faults(force_status=401)
        agent = agent_factory(receiver, collectors={
            "syslog": {"enabled": True, "paths": [str(log)], "start_at": "beginning"},
        })
        r = agent.cli("run", "--once", "--timeout", "20")
        assert r.returncode == 1
        assert "failed: backend refuses the credentials" in r.stderr
        st = agent.cli("spool", "--json")
        import json

        assert json.loads(st.stdout)["pending_events"] == 10

    def test_times_out_with_reason_when_backend_away(self, agent_factory, receiver, tmp_path):
        """No backend: --once gives up after --timeout with the last error; nothing is lost."""
        log = tmp_path / "syslog"
        log.write_text("Nov 26 20:00:00 web-01 app[1]: hello\n")
        receiver.stop()
        agent = agent_factory(receiver, collectors={
            "syslog": {"enabled": True, "paths": [str(log)], "start_at": "beginning"},
        })
        r = agent.cli("run", "--once", "--timeout", "3")
        assert r.returncode == 1
        assert "not acknowledged after 3s" in r.stderr
        receiver.start()
        r = agent.cli("run", "--once", "--timeout", "30")
        assert r.returncode == 0, r.stderr[-2000:]
        assert [x["message"] for x in receiver.view("system-logs")] == ["hello"]


def test_malloc_arenas_are_limited_where_the_libc_is_glibc() -> None:
    """``run`` caps glibc's malloc arenas (as MALLOC_ARENA_MAX=2 would): mallopt takes the cap
    here; elsewhere the call says it could not, and nothing else changes."""
    import platform

    from agent.cli.run import limit_malloc_arenas

    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
