"""Journal senders for unit tests of the derivers: the trusted fields journald would record for
a real program on this machine (:func:`sender`), or for an unprivileged local user's tool."""

from __future__ import annotations

from functools import cache
from typing import Any

from collectors.derivers.provenance import PAM_PROGRAMS, PAM_RULES, RULES, SenderRules, default_rules

FULL_CAPS = "1ffffffffff"


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
