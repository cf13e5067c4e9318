"""Senders for the derivers' tests: the trusted fields journald would record for a real program
on this machine (:func:`sender`) or an unprivileged user's tool (:func:`user_tool`), and a real
throwaway user who writes into a live journald (:class:`Intruder`)."""

from __future__ import annotations

import secrets
import subprocess
from functools import cache
from typing import Any

from collectors.derivers.provenance import PAM_PROGRAMS, PAM_RULES, RULES, SenderRules, default_rules
from tests.harness import AgentProcess
from tests.parts import LiveJournald

FULL_CAPS = "1ffffffffff"
DEV_LOG = "/run/systemd/journal/dev-log"


@cache
def rules() -> SenderRules:
    return default_rules()


def sender(program: str, uid: int = 0, pid: int = 812, **fields: Any) -> dict[str, Any]:
    """What journald records for ``program``'s own line: its executable as found here (or, when
    it is not installed, a process that exited before journald read its exe: name and caps)."""
    rule = RULES.get(program) or PAM_RULES.get(PAM_PROGRAMS.get(program, program))
    assert rule is not None, f"no rule for {program}"
    exes = sorted(rules().paths(rule.names))
    out: dict[str, Any] = {"uid": uid, "gid": uid, "pid": pid, "comm": rule.names[0], "transport": "syslog",
                           "cap_effective": FULL_CAPS if (uid == 0 or rule.setuid) else "0"}
    if exes:
        out["exe"] = exes[0]
    return {**out, **fields}


def user_tool(uid: int = 1000, comm: str = "logger", exe: str = "/usr/bin/logger", **fields: Any) -> dict[str, Any]:
    """What journald records for a line an unprivileged user's tool sent."""
    return {"uid": uid, "gid": uid, "pid": 4242, "comm": comm, "exe": exe, "transport": "syslog",
            "cap_effective": "0", **fields}


class Intruder:
    """A throwaway unprivileged user (removed afterwards) acting inside journald's namespace."""

    def __init__(self, jd: LiveJournald) -> None:
        self.jd = jd
        self.name = f"forg{secrets.token_hex(3)}"
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", self.name], check=True, capture_output=True)
        self.uid = int(subprocess.run(["id", "-u", self.name], capture_output=True, text=True, check=True).stdout)

    def run(self, args: list[str], input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        r = self.jd.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups", "--reset-env",
                         *args], input=input, check=False)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        return r

    def logger(self, tag: str, *messages: str, size: int | None = None) -> None:
        args = ["logger", "--socket", DEV_LOG, "--socket-errors=on", "-t", tag]
        if size is not None:
            args += ["--size", str(size)]
        self.run(args, input="".join(m + "\n" for m in messages).encode())

    def remove(self) -> None:
        subprocess.run(["userdel", self.name], capture_output=True)


def internal_count(agent: AgentProcess, name: str, source: str) -> float:
    """The agent's ``alpacon_agent_internal_events_total{name=…, source=…}`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(agent.metrics_text()) for s in fam.samples
               if s.name == "alpacon_agent_internal_events_total" and s.labels.get("name") == name
               and s.labels.get("source") == source)
