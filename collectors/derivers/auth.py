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

sshd ``Disconnecting: Too many authentication  login_failed    401     also ``maximum
failures for U`` …                                                      authentication attempts``
sshd ``PAM N more authentication failures``   login_failed    401     ``attempts: N``
sshd ``Received disconnect from IP: 11: …``   logout          200     of a connection seen
``message repeated N times: [ line ]``         the line's row          ``attempts: N``
==========================================  ==============  ======  =========================

pam_unix ``authentication failure`` lines of sshd, sudo, su and login are skipped: the program's
own line counts the attempt. Old PAM's ``prog(pam_unix)`` lines, display managers, FTP servers,
login(1)'s ``ROOT LOGIN``, ftpd and klogind: :mod:`collectors.derivers.auth_forms`.

Only lines whose journal sender fits the program they name become rows (see
:class:`collectors.derivers.base.Witness`); each row's ``provenance`` says who vouched for it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from agent.events import make_event, stable_id
from agent.typing import Event
from collectors.derivers.auth_forms import (
    FTPD_PROGRAMS,
    OWN_FAILURE_LINE,
    RE_PAM_AUTH_FAILURE,
    RE_PAM_MORE,
    RE_PAM_OLD_SESSION,
    ftpd_line,
    klogind_line,
    login_line,
    make_row,
    pam_failure,
    pam_session_action,
    su_line,
    sudo_line,
)
from collectors.derivers.auth_forms import clip as _clip
from collectors.derivers.auth_forms import to_int as _int
from collectors.derivers.auth_forms import to_ip as _ip
from collectors.derivers.base import Witness, accepted_data, line_id
from collectors.derivers.bounded import BoundedTable

#: longest message worth parsing; auth lines are short (a sudo COMMAND= line can be long)
MAX_MESSAGE = 16_384

SSHD_PROGRAMS = frozenset({"sshd", "sshd-session", "sshd-auth"})
SUDO_PROGRAMS = frozenset({"sudo"})
SU_PROGRAMS = frozenset({"su"})
LOGIN_PROGRAMS = frozenset({"login"})
FTP_PROGRAMS = FTPD_PROGRAMS | {"vsftpd", "proftpd"}
OTHER_PROGRAMS = frozenset({"klogind", "gdm", "kdm", "xdm"})
#: read so that their senders are checked (and forgeries counted); no rows of their own yet
LOGIND_PROGRAMS = frozenset({"systemd-logind"})

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
# old: "Received disconnect from IP: 11: Bye Bye"; new: "… from IP port P:11: disconnected by user"
RE_RECEIVED_DISCONNECT = re.compile(
    r"^Received disconnect from (?P<ip>\S+?)(?: port (?P<port>\d{1,5}))?: ?(?P<code>\d{1,3}): (?P<why>.*)$")
RE_TOO_MANY = re.compile(
    r"^(?:Disconnecting: Too many authentication failures for (?P<invalid1>invalid user )?(?P<user1>.+)"
    r"|Disconnecting (?:authenticating|(?P<invalid2>invalid)) user (?P<user2>.+) (?P<ip2>\S+) port (?P<port2>\d{1,5}): "
    r"Too many authentication failures"
    r"|error: maximum authentication attempts exceeded for (?P<invalid3>invalid user )?(?P<user3>.+) from "
    r"(?P<ip3>\S+) port (?P<port3>\d{1,5})(?: ssh2)?)$"
)
RE_PREAUTH = re.compile(r"\s*\[preauth\]$")

# rsyslog's reduction of repeated lines: "message repeated 5 times: [ Failed password …]"
RE_REPEATED = re.compile(r"^message repeated (?P<n>\d{1,9}) times: \[ ?(?P<inner>.*)\]$")

# --- pam_unix ---------------------------------------------------------------------------
RE_PAM_SESSION = re.compile(
    r"^pam_unix\((?P<service>[\w.\-]+):session\): session (?P<what>opened|closed) for user "
    r"(?P<user>[^\s()]+)(?:\(uid=(?P<uid>\d+)\))?"
    r"(?: by (?P<by>[^\s()]*)(?:\(uid=(?P<by_uid>\d+)\))?)?\s*$"
)
RE_PAM_AUTH = re.compile(r"^pam_unix\((?P<service>[\w.\-]+):auth\): (?P<rest>.*)$")

class AuthDeriver:
    """``system_log`` → ``user_activity`` for sshd, sudo, su, login and pam_unix lines."""

    name = "auth"
    #: the lines this deriver can use: these programs, or a message starting with a prefix
    #: (collectors skip building event dicts for every other line; see derive.line_gate)
    programs: frozenset[str] = (SSHD_PROGRAMS | SUDO_PROGRAMS | SU_PROGRAMS | LOGIN_PROGRAMS | FTP_PROGRAMS
                                | OTHER_PROGRAMS | LOGIND_PROGRAMS)
    #: modern PAM lines, old PAM's (any program, ``prog(pam_unix)`` tag), login's under a ``--`` tag
    message_prefixes: tuple[str, ...] = ("pam_unix(", "authentication failure; ", "session opened for user ",
                                         "session closed for user ", "ROOT LOGIN ", "message repeated ")

    def __init__(
        self,
        accept: Callable[[Event], bool] | None = None,
        ignore_services: Iterable[str] = ("cron", "CRON", "crond", "systemd-user", "atd"),
        max_tracked: int = 4096,
        max_tracked_bytes: int = 4 << 20,
        witness: Witness | None = None,
        counter: Callable[..., Any] | None = None,
    ) -> None:
        self.accept = accept
        self.ignore_services = frozenset(ignore_services)
        self.max_tracked = max_tracked
        self.witness = witness if witness is not None else Witness(counter=counter)
        self.counter = counter
        #: (host, sshd monitor pid) → (user, ip, port) of its accepted connection
        self._conn: BoundedTable[tuple[Any, int], tuple[str, str | None, int | None]] = BoundedTable(
            max_tracked, max_tracked_bytes, on_evict=self._evicted)
        #: (host, user, ip, port) of connections whose logout was already reported
        self._out: BoundedTable[tuple[Any, ...], bool] = BoundedTable(
            max_tracked, max_tracked_bytes, on_evict=self._evicted)
        #: (host, login pid, user) of console logins reported: login(1) and its PAM session both
        #: log one ("ROOT LOGIN ON tty2" and "session opened for user root by LOGIN(uid=0)")
        self._logins: BoundedTable[tuple[Any, ...], bool] = BoundedTable(
            max_tracked, max_tracked_bytes, on_evict=self._evicted)

    def _evicted(self, n: int) -> None:
        if self.counter is not None:
            self.counter("deriver_state_evicted", n, deriver="auth")

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
            if program not in self.programs and not message.startswith(self.message_prefixes):
                return []
            # the journal vouches, not the text: only a sender that fits the program the line
            # claims (collectors.derivers.provenance) makes rows, and before any state changes
            prov = self.witness.vouch(event, program, message)
            if prov is None:
                return []
            pid = data.get("pid") if isinstance(data.get("pid"), int) else None
            extra = data.get("extra")
            module = extra.get("pam_module") if isinstance(extra, dict) else None
            row = self.parse(program, message, pid=pid, host=data.get("hostname"),
                             pam_module=module if isinstance(module, str) else None)
        except Exception:  # a deriver must never break its collector
            return []
        if row is None:
            return []
        row["details"]["program"] = program
        if pid is not None:
            row["details"]["pid"] = pid
        row["provenance"] = prov.data()
        return [make_event("user_activity", row, ts=event.get("ts"), id=stable_id("ua", line_id(event)))]

    # -- dispatch --------------------------------------------------------------------------
    def parse(self, program: str, message: str, pid: int | None = None, host: Any = None,
              pam_module: str | None = None) -> dict[str, Any] | None:
        """The ``user_activity`` data for one line, or None when the line is not one we know.
        ``pam_module``: the line's tag was old PAM's ``program(module)``."""
        message = message.rstrip("\r\n")
        if message.startswith("message repeated "):
            return self._repeated(program, message, pid, host, pam_module)
        if pam_module is not None:
            return self._pam_old(program, pam_module, message, pid, host)
        if message.startswith("pam_unix("):
            return self._pam(program, message, pid, host)
        if program in SSHD_PROGRAMS:
            return self._sshd(message, pid, host)
        if program in SUDO_PROGRAMS:
            return sudo_line(message)
        if program in SU_PROGRAMS:
            return su_line(message)
        if program in LOGIN_PROGRAMS or message.startswith("ROOT LOGIN "):  # login under a "-- root" tag
            return self._console_login(login_line(message), pid, host)
        if program in FTP_PROGRAMS:
            return ftpd_line(program, message)
        if program == "klogind":
            return klogind_line(message)
        return None

    _row = staticmethod(make_row)

    def _repeated(self, program: str, message: str, pid: int | None, host: Any,
                  pam_module: str | None) -> dict[str, Any] | None:
        """rsyslog's ``message repeated N times: [ line]``: the line's row, standing for N attempts."""
        m = RE_REPEATED.match(message)
        if m is None or m["inner"].startswith("message repeated "):
            return None
        row = self.parse(program, m["inner"], pid, host, pam_module)
        if row is not None:
            row["details"]["attempts"] = int(m["n"])
            row["details"]["repeated"] = True
        return row

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
        if m := RE_TOO_MANY.match(message):
            user = m["user1"] or m["user2"] or m["user3"]
            ip = _ip(m["ip2"] or m["ip3"], details)
            details.update(port=_int(m["port2"] or m["port3"]), reason="too many authentication failures")
            if m["invalid1"] or m["invalid2"] or m["invalid3"]:
                details["invalid_user"] = True
            return self._row(user, "login_failed", 401, ip, details)
        if m := RE_PAM_MORE.match(message):  # sshd's own "PAM 4 more authentication failures; … user=root"
            return pam_failure("sshd", m["kv"], int(m["n"]), None)
        if not preauth and (m := RE_RECEIVED_DISCONNECT.match(message)):
            return self._received_disconnect(m, pid, host, details)
        return None

    def _received_disconnect(self, m: re.Match[str], pid: int | None, host: Any,
                             details: dict[str, Any]) -> dict[str, Any] | None:
        """``Received disconnect from IP[ port P]: 11: why``: the logout of the connection it
        ends, when that connection's login was seen (by the monitor's pid, else the only open
        connection from that address); nothing otherwise (a client leaving before logging in)."""
        ip = _ip(m["ip"], {})
        port = _int(m["port"])
        conn = self._conn.get((host, pid)) if pid is not None else None
        if conn is None:
            same = [c for k, c in self._conn.items() if k[0] == host and c[1] == ip and (port is None or c[2] == port)]
            if len(same) != 1:
                return None
            conn = same[0]
        if not self._logout_once((host, *conn)):
            return None
        details.update(port=conn[2], reason=_clip(m["why"], 512), code=int(m["code"]))
        return self._row(conn[0], "logout", 200, conn[1], details)

    # -- pam_unix ----------------------------------------------------------------------------
    def _pam(self, program: str, message: str, pid: int | None, host: Any) -> dict[str, Any] | None:
        m = RE_PAM_SESSION.match(message)
        if m is None:
            if f := RE_PAM_AUTH.match(message):
                return self._pam_failure(f["service"], f["rest"], pid, host, None)
            return None  # account checks, "check pass; user unknown" …
        return self._session(m["service"], m["what"], m["user"], m["uid"], m["by"], pid, host, None)

    def _pam_old(self, program: str, module: str, message: str, pid: int | None, host: Any) -> dict[str, Any] | None:
        """Old PAM's ``program(pam_unix)[pid]:`` lines: the service is the program."""
        if m := RE_PAM_OLD_SESSION.match(message):
            return self._session(program, m["what"], m["user"], m["uid"], m["by"], pid, host, module)
        if RE_PAM_AUTH_FAILURE.match(message) or RE_PAM_MORE.match(message):
            return self._pam_failure(program, message, pid, host, module)
        return None

    def _pam_failure(self, service: str, message: str, pid: int | None, host: Any,
                     module: str | None) -> dict[str, Any] | None:
        """``authentication failure; …`` and ``N more authentication failures; …``. A new-style
        line of a service whose program logs each failure itself (sshd's ``Failed password``) is
        skipped: that line is the row. Old PAM's tags come from systems where it is the only one."""
        if module is None and service in OWN_FAILURE_LINE:
            return None
        if m := RE_PAM_MORE.match(message):
            return pam_failure(service, m["kv"], int(m["n"]), module)
        if m := RE_PAM_AUTH_FAILURE.match(message):
            return pam_failure(service, m["kv"], None, module)
        return None

    def _session(self, service: str, what: str, user: str, uid: str | None, by: str | None, pid: int | None,
                 host: Any, module: str | None) -> dict[str, Any] | None:
        if service in self.ignore_services:
            return None
        details: dict[str, Any] = {"service": service, "by": by or None, "pam_module": module}
        if uid:
            details["uid"] = int(uid)
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
        base = service.split("-")[0]
        if base in ("sudo", "su"):
            if module is None or what != "opened" or not by:
                return None  # the sudo COMMAND= / su "(to X)" line is the row
            # old PAM systems' su logs nothing of its own: "session opened for user root by alice(uid=500)"
            details.update(target_user=user, by=None)
            return self._row(by, base, 200, None, details)
        action = pam_session_action(service, what)
        row = self._row(user, action, 200, None, details)
        return self._console_login(row, pid, host) if service == "login" else row

    def _console_login(self, row: dict[str, Any] | None, pid: int | None, host: Any) -> dict[str, Any] | None:
        """One login row per login(1) process, whichever of its two lines comes first."""
        if row is None or row["action"] != "login" or pid is None:
            return row
        key = (host, pid, row["user"])
        if key in self._logins:
            return None
        self._remember(self._logins, key, True)
        return row
