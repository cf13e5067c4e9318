"""User activity from auth log lines: sshd, sudo, su, login and pam_unix → ``user_activity``.

:class:`AuthDeriver` is a deriver (see :mod:`collectors.derivers.base`): called with each
``system_log`` event, it returns zero or one ``user_activity`` event whose id is
``stable_id("ua", <line id>)``. Lines it does not know yield nothing, never a guessed row.

One row per fact, even where several programs log the same thing:

==========================================  ==============  ======  =========================
line                                         action          result  note
==========================================  ==============  ======  =========================
sshd ``Accepted <method> for U from IP``     login           200     pam "session opened" skipped
sshd ``Failed <method> for [invalid user] U  login_failed    401     ``Failed none`` skipped
sshd ``Invalid user U from IP``              invalid_user    401
sshd ``User U from IP not allowed because``  login_failed    403
sshd ``Disconnected from user U IP``         logout          200     once per sshd pid, with
pam_unix(sshd:session) ``session closed``    logout          200     whichever comes first
sudo ``U : TTY=… ; COMMAND=…``               sudo            200
sudo ``N incorrect password attempt(s)``     sudo            401
sudo ``a password is required``              sudo            401
sudo ``user NOT in sudoers`` / ``… not       sudo            403
allowed``
su ``(to T) U on TTY`` / ``Successful su``   su              200
su ``FAILED SU (to T) U on TTY``             su              401
login ``FAILED LOGIN …``                     login_failed    401
pam_unix(login:session) opened / closed      login / logout  200
pam_unix(<other>:session) opened / closed    session_open /  200     cron, systemd-user …
                                             session_close           ignored (config)
==========================================  ==============  ======  =========================

pam_unix ``authentication failure`` lines are skipped: the program's own line counts the attempt.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from agent.events import make_event, stable_id
from agent.typing import Event
from collectors.derivers.base import accepted_data, line_id

#: longest message worth parsing; auth lines are short (a sudo COMMAND= line can be long)
MAX_MESSAGE = 16_384
MAX_FIELD = 4096
MAX_USER = 256

SSHD_PROGRAMS = frozenset({"sshd", "sshd-session", "sshd-auth"})
SUDO_PROGRAMS = frozenset({"sudo"})
SU_PROGRAMS = frozenset({"su"})
LOGIN_PROGRAMS = frozenset({"login"})

# --- sshd -------------------------------------------------------------------------------
# user names are matched greedily so that a hostile name containing " from X port N"
# cannot move the address: sshd appends the real one last.
_PORT = r"(?: port (?P<port>\d{1,5}))?"
RE_ACCEPTED = re.compile(
    r"^Accepted (?P<method>[\w@.\-/]+) for (?P<user>.+) from (?P<ip>\S+)" + _PORT
    + r"(?: (?P<proto>ssh2?))?(?:: (?P<key>.*))?$"
)
RE_FAILED = re.compile(
    r"^Failed (?P<method>[\w@.\-/]+) for (?P<invalid>invalid user )?(?P<user>.*) from (?P<ip>\S+)"
    + _PORT + r"(?: (?P<proto>ssh2?))?(?:: (?P<key>.*))?$"
)
RE_INVALID = re.compile(r"^Invalid user (?P<user>.*) from (?P<ip>\S+)" + _PORT + r"$")
RE_NOT_ALLOWED = re.compile(
    r"^User (?P<user>.+) from (?P<ip>\S+) not allowed because (?P<why>.+)$"
)
RE_DISCONNECTED = re.compile(r"^Disconnected from user (?P<user>.+) (?P<ip>\S+) port (?P<port>\d{1,5})$")
RE_PREAUTH = re.compile(r"\s*\[preauth\]$")

# --- pam_unix ---------------------------------------------------------------------------
RE_PAM_SESSION = re.compile(
    r"^pam_unix\((?P<service>[\w.\-]+):session\): session (?P<what>opened|closed) for user "
    r"(?P<user>[^\s()]+)(?:\(uid=(?P<uid>\d+)\))?"
    r"(?: by (?P<by>[^\s()]*)(?:\(uid=(?P<by_uid>\d+)\))?)?\s*$"
)

# --- sudo -------------------------------------------------------------------------------
RE_SUDO = re.compile(r"^\s*(?P<user>[^\s:;]+) : (?P<rest>.*)$")
SUDO_KEYS = frozenset({"TTY", "PWD", "USER", "GROUP", "ENV", "COMMAND", "HOST", "TSID", "CHROOT", "CWD"})
RE_SUDO_ATTEMPTS = re.compile(r"^(?P<n>\d+) incorrect password attempts?$")

# --- su ---------------------------------------------------------------------------------
RE_SU = re.compile(r"^(?P<failed>FAILED SU )?\(to (?P<target>[^\s)]+)\) (?P<user>\S+) on (?P<tty>\S+)$")
RE_SU_SHADOW = re.compile(r"^(?P<how>Successful|FAILED) su for (?P<target>\S+) by (?P<user>\S+)$")

# --- login ------------------------------------------------------------------------------
# shadow:     FAILED LOGIN (1) on '/dev/tty1' FOR 'alice', Authentication failure
# util-linux: FAILED LOGIN 1 FROM tty1 FOR alice, Authentication failure
RE_LOGIN_FAILED = re.compile(
    r"^FAILED LOGIN \(?(?P<n>\d+)\)? (?:on|FROM) '?(?P<tty>[^'\s]+)'? FOR '?(?P<user>[^',\s]+)'?,\s*(?P<why>.*)$"
)

_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def _clip(text: str | None, n: int = MAX_FIELD) -> str | None:
    if text is None:
        return None
    text = _CTRL.sub("?", text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _ip(text: str | None, details: dict[str, Any]) -> str | None:
    """An IP address, or None (a host name from ``UseDNS yes`` goes to details)."""
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        details["host"] = _clip(text, 256)
        return None


class AuthDeriver:
    """``system_log`` → ``user_activity`` for sshd, sudo, su, login and pam_unix lines."""

    name = "auth"
    #: the lines this deriver can use: these programs, or a message starting with a prefix
    #: (collectors skip building event dicts for every other line; see derive.line_gate)
    programs: frozenset[str] = SSHD_PROGRAMS | SUDO_PROGRAMS | SU_PROGRAMS | LOGIN_PROGRAMS
    message_prefixes: tuple[str, ...] = ("pam_unix(",)

    def __init__(
        self,
        accept: Callable[[Event], bool] | None = None,
        ignore_services: Iterable[str] = ("cron", "CRON", "crond", "systemd-user", "atd"),
        max_tracked: int = 4096,
    ) -> None:
        self.accept = accept
        self.ignore_services = frozenset(ignore_services)
        self.max_tracked = max_tracked
        #: (host, sshd monitor pid) → (user, ip, port) of its accepted connection
        self._conn: OrderedDict[tuple[Any, int], tuple[str, str | None, int | None]] = OrderedDict()
        #: (host, user, ip, port) of connections whose logout was already reported
        self._out: OrderedDict[tuple[Any, ...], bool] = OrderedDict()

    # -- entry point -----------------------------------------------------------------------
    def __call__(self, event: Event) -> list[Event]:
        try:
            data = accepted_data(event, self.accept)
            if data is None:
                return []
            program = data.get("program")
            message = data.get("message")
            if not isinstance(program, str) or not isinstance(message, str):
                return []
            if len(message) > MAX_MESSAGE or not message:
                return []
            extra = data.get("extra")
            uid = extra.get("uid") if isinstance(extra, dict) else None
            if uid is not None and uid != "0" and program in SSHD_PROGRAMS:
                # journald records who sent a line (_UID). sshd logs as root, so an sshd line
                # from another uid is a forgery (logger -t sshd). sudo and su log with the
                # invoking user's uid, so the same check cannot be made for them.
                return []
            pid = data.get("pid") if isinstance(data.get("pid"), int) else None
            row = self.parse(program, message, pid=pid, host=data.get("hostname"))
        except Exception:  # a deriver must never break its collector
            return []
        if row is None:
            return []
        row["details"]["program"] = program
        if pid is not None:
            row["details"]["pid"] = pid
        return [make_event("user_activity", row, ts=event.get("ts"), id=stable_id("ua", line_id(event)))]

    # -- dispatch --------------------------------------------------------------------------
    def parse(self, program: str, message: str, pid: int | None = None, host: Any = None) -> dict[str, Any] | None:
        """The ``user_activity`` data for one line, or None when the line is not one we know."""
        message = message.rstrip("\r\n")
        if message.startswith("pam_unix("):
            return self._pam(program, message, pid, host)
        if program in SSHD_PROGRAMS:
            return self._sshd(message, pid, host)
        if program in SUDO_PROGRAMS:
            return self._sudo(message)
        if program in SU_PROGRAMS:
            return self._su(message)
        if program in LOGIN_PROGRAMS:
            return self._login(message)
        return None

    @staticmethod
    def _row(user: str, action: str, result: int, ip: str | None, details: dict[str, Any]) -> dict[str, Any] | None:
        user = user.strip()
        if not user:
            return None
        if len(user) > MAX_USER:
            details["user_truncated"] = True
        return {
            "user": _clip(user, MAX_USER),
            "ip": ip,
            "action": action,
            "result": result,
            "details": {k: v for k, v in details.items() if v is not None},
        }

    # -- sshd ------------------------------------------------------------------------------
    # An ssh logout is logged twice: "Disconnected from user U IP port P" by the session's
    # child and "pam_unix(sshd:session): session closed" by the monitor (the pid of the
    # "Accepted" line). Both map to the connection (user, ip, port); the first one seen is
    # the logout row, the other is skipped.
    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_tracked:
            table.popitem(last=False)

    def _logout_once(self, conn: tuple[Any, ...]) -> bool:
        """True the first time a connection's logout is seen."""
        if conn in self._out:
            return False
        self._remember(self._out, conn, True)
        return True

    def _sshd(self, message: str, pid: int | None, host: Any) -> dict[str, Any] | None:
        preauth = bool(RE_PREAUTH.search(message))
        if preauth:
            message = RE_PREAUTH.sub("", message)
        details: dict[str, Any] = {"service": "sshd"}
        if m := RE_ACCEPTED.match(message):
            ip = _ip(m["ip"], details)
            port = _int(m["port"])
            details.update(method=m["method"], port=port, key=_clip(m["key"], 512))
            if pid is not None:
                self._remember(self._conn, (host, pid), (m["user"], ip, port))
            return self._row(m["user"], "login", 200, ip, details)
        if m := RE_FAILED.match(message):
            if m["method"] == "none":
                return None
            ip = _ip(m["ip"], details)
            details.update(method=m["method"], port=_int(m["port"]), key=_clip(m["key"], 512))
            if m["invalid"]:
                details["invalid_user"] = True
            return self._row(m["user"], "login_failed", 401, ip, details)
        if m := RE_INVALID.match(message):
            ip = _ip(m["ip"], details)
            details["port"] = _int(m["port"])
            return self._row(m["user"], "invalid_user", 401, ip, details)
        if m := RE_NOT_ALLOWED.match(message):
            ip = _ip(m["ip"], details)
            details["reason"] = "not allowed because " + (_clip(m["why"], 512) or "")
            return self._row(m["user"], "login_failed", 403, ip, details)
        if not preauth and (m := RE_DISCONNECTED.match(message)):
            ip = _ip(m["ip"], details)
            port = _int(m["port"])
            details["port"] = port
            if not self._logout_once((host, m["user"], ip, port)):
                return None
            return self._row(m["user"], "logout", 200, ip, details)
        return None

    # -- pam_unix --------------------------------------------------------------------------
    def _pam(self, program: str, message: str, pid: int | None, host: Any) -> dict[str, Any] | None:
        m = RE_PAM_SESSION.match(message)
        if m is None:
            return None  # auth failures, account checks: the program's own line counts
        service, what, user = m["service"], m["what"], m["user"]
        if service in self.ignore_services:
            return None
        details: dict[str, Any] = {"service": service, "by": m["by"] or None}
        if m["uid"]:
            details["uid"] = int(m["uid"])
        if service in SSHD_PROGRAMS:
            if what == "opened":
                return None  # the Accepted line is the login
            conn = self._conn.pop((host, pid), None) if pid is not None else None
            if conn is None:
                # the login was before the agent started: no address to tie it to; skip it
                # when a "Disconnected from user" of that user was just reported
                recent = list(self._out)[-64:]
                if any(k[0] == host and k[1] == user for k in recent):
                    return None
                return self._row(user, "logout", 200, None, details)
            if not self._logout_once((host, *conn)):
                return None
            details["port"] = conn[2]
            return self._row(user, "logout", 200, conn[1], details)
        if service.startswith(("sudo", "su")) and service.split("-")[0] in ("sudo", "su"):
            return None  # the sudo COMMAND= / su "(to X)" line is the row
        if service in ("login", "remote"):
            return self._row(user, "login" if what == "opened" else "logout", 200, None, details)
        return self._row(user, "session_open" if what == "opened" else "session_close", 200, None, details)

    # -- sudo ------------------------------------------------------------------------------
    def _sudo(self, message: str) -> dict[str, Any] | None:
        m = RE_SUDO.match(message)
        if m is None:
            return None
        user, parts = m["user"], [p.strip() for p in m["rest"].split(" ; ")]
        fields: dict[str, str] = {}
        notes: list[str] = []
        for i, part in enumerate(parts):
            key, eq, value = part.partition("=")
            if eq and key in SUDO_KEYS:
                if key == "COMMAND":  # the command may itself contain " ; "
                    fields[key] = " ; ".join([value, *parts[i + 1 :]])
                    break
                fields[key] = value
            else:
                notes.append(part)
        if "COMMAND" not in fields and "USER" not in fields:
            return None
        details: dict[str, Any] = {
            "service": "sudo",
            "tty": _clip(fields.get("TTY"), 256),
            "cwd": _clip(fields.get("PWD") or fields.get("CWD")),
            "target_user": _clip(fields.get("USER"), 256),
            "target_group": _clip(fields.get("GROUP"), 256),
            "command": _clip(fields.get("COMMAND")),
        }
        if not notes:
            return self._row(user, "sudo", 200, None, details)
        note = notes[0]
        details["reason"] = _clip(note, 512)
        if am := RE_SUDO_ATTEMPTS.match(note):
            details["attempts"] = int(am["n"])
            return self._row(user, "sudo", 401, None, details)
        if note in ("a password is required", "no password was provided"):
            return self._row(user, "sudo", 401, None, details)
        low = note.lower()
        if "not in sudoers" in low or "not allowed" in low or "not allowed to" in low:
            return self._row(user, "sudo", 403, None, details)
        if "authentication" in low or "error" in low or "unable" in low:
            return self._row(user, "sudo", 500, None, details)
        return None

    # -- su --------------------------------------------------------------------------------
    def _su(self, message: str) -> dict[str, Any] | None:
        if m := RE_SU.match(message):
            details = {"service": "su", "target_user": m["target"], "tty": _clip(m["tty"], 256)}
            return self._row(m["user"], "su", 401 if m["failed"] else 200, None, details)
        if m := RE_SU_SHADOW.match(message):
            details = {"service": "su", "target_user": m["target"]}
            return self._row(m["user"], "su", 200 if m["how"] == "Successful" else 401, None, details)
        return None

    # -- login -----------------------------------------------------------------------------
    def _login(self, message: str) -> dict[str, Any] | None:
        if m := RE_LOGIN_FAILED.match(message):
            details = {"service": "login", "tty": _clip(m["tty"], 256), "reason": _clip(m["why"], 512),
                       "attempt": int(m["n"])}
            return self._row(m["user"], "login_failed", 401, None, details)
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text else None
