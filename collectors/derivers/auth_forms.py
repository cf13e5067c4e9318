"""The auth deriver's line forms beyond sshd, sudo and su: PAM (old and new tags), login, FTP
servers, klogind — each a pure function from one message to a ``user_activity`` row or None.

Old PAM (before Linux-PAM 0.99) tagged its lines ``sshd(pam_unix)[812]:``; the syslog parser
gives program ``sshd`` and ``extra.pam_module``. Their messages have no ``pam_unix(svc:type):``
prefix: ``authentication failure; logname= uid=0 euid=0 tty=NODEVssh ruser= rhost=198.51.100.7
user=root``, ``session opened for user alice by (uid=0)``, ``session closed for user alice``.

================================================  =================  ======
line                                              action             result
================================================  =================  ======
PAM ``authentication failure; … user=U``          login_failed / su  401     old tags; display
                                                                             managers, FTP servers
``PAM N more authentication failures; … user=U``  login_failed       401     ``attempts: N``
login ``ROOT LOGIN ON tty2`` / ``LOGIN ON tty1    login              200
BY U``
login ``FAILED LOGIN 1 FROM (null) FOR U, why``   login_failed       401
login ``TOO MANY LOGIN TRIES (5) … FOR U``        login_failed       401     ``attempts: 5``
ftpd ``FTP LOGIN FROM host [IP], U``              login              200     ``ANONYMOUS …``: anonymous
ftpd ``FTP LOGIN REFUSED … FROM host [IP], U``    login_failed       403
ftpd ``FTP LOGIN FAILED FROM host, U``            login_failed       401
vsftpd ``[U] OK LOGIN: Client "IP"`` / ``FAIL``   login / …failed    200/401
proftpd ``… ([IP]) - USER U: Login successful.``  login / …failed    200/401
klogind ``Authentication failed from IP (host)``  login_failed       401     user ``unknown``
================================================  =================  ======
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

MAX_FIELD = 4096
MAX_USER = 256

#: PAM services of graphical and console logins: their sessions are logins
LOGIN_SERVICES = frozenset(
    {
        "login",
        "remote",
        "gdm",
        "gdm-password",
        "gdm-autologin",
        "gdm-fingerprint",
        "gdm-smartcard",
        "kdm",
        "lightdm",
        "sddm",
        "xdm",
        "lxdm",
    }
)
#: PAM services of FTP servers
FTP_SERVICES = frozenset({"ftp", "ftpd", "in.ftpd", "vsftpd", "proftpd", "pure-ftpd", "wu-ftpd", "wu.ftpd"})
#: programs that write the classic ftpd lines (wu-ftpd, BSD ftpd)
FTPD_PROGRAMS = frozenset({"ftpd", "in.ftpd", "wu-ftpd", "wu.ftpd", "ftp"})
#: services whose program logs each failed attempt itself (the PAM failure line would count it twice)
OWN_FAILURE_LINE = frozenset({"sshd", "sshd-session", "sshd-auth", "sudo", "sudo-i", "su", "su-l", "login"})

_CTRL = re.compile(r"[\x00-\x1f\x7f]")

# --- PAM ---------------------------------------------------------------------------------
RE_PAM_OLD_SESSION = re.compile(
    r"^session (?P<what>opened|closed) for user (?P<user>[^\s()]+)(?:\(uid=(?P<uid>\d+)\))?"
    r"(?: by (?P<by>[^\s()]*)(?:\(uid=(?P<by_uid>\d+)\))?)?\s*$"
)
RE_PAM_AUTH_FAILURE = re.compile(r"^authentication failure; (?P<kv>.*)$")
RE_PAM_MORE = re.compile(r"^(?:PAM )?(?P<n>\d{1,9}) more authentication failures?; (?P<kv>.*)$")
_KV = re.compile(r"(\w+)=(\S*)")

# --- sudo -------------------------------------------------------------------------------
RE_SUDO = re.compile(r"^\s*(?P<user>[^\s:;]+) : (?P<rest>.*)$")
SUDO_KEYS = frozenset({"TTY", "PWD", "USER", "GROUP", "ENV", "COMMAND", "HOST", "TSID", "CHROOT", "CWD"})
RE_SUDO_ATTEMPTS = re.compile(r"^(?P<n>\d+) incorrect password attempts?$")

# --- su ---------------------------------------------------------------------------------
RE_SU = re.compile(r"^(?P<failed>FAILED SU )?\(to (?P<target>[^\s)]+)\) (?P<user>\S+) on (?P<tty>\S+)$")
RE_SU_SHADOW = re.compile(r"^(?P<how>Successful|FAILED) su for (?P<target>\S+) by (?P<user>\S+)$")

# --- login -------------------------------------------------------------------------------
# util-linux: ROOT LOGIN ON tty2 [FROM host]; LOGIN ON tty1 BY alice [FROM host]
# shadow:     ROOT LOGIN  on '/dev/tty2' [from 'host']
RE_ROOT_LOGIN = re.compile(r"^ROOT LOGIN\s+(?:ON|on) '?(?P<tty>[^'\s]+)'?(?: (?:FROM|from) '?(?P<host>[^'\s]+)'?)?$")
RE_LOGIN_ON = re.compile(r"^LOGIN ON (?P<tty>\S+) BY (?P<user>\S+)(?: FROM (?P<host>\S+))?$")
# shadow:     FAILED LOGIN (1) on '/dev/tty1' [from 'host'] FOR 'alice', Authentication failure
# util-linux: FAILED LOGIN 1 FROM (null) FOR alice, Authentication failure (FROM: host or tty)
RE_LOGIN_FAILED = re.compile(
    r"^FAILED LOGIN (?:\((?P<n1>\d{1,9})\)|(?P<n2>\d{1,9})|SESSION) (?P<prep>on|FROM) '?(?P<where>[^'\s]+)'?"
    r"(?: from '(?P<host>[^']*)')? FOR '?(?P<user>[^',\s]+)'?,\s*(?P<why>.*)$"
)
RE_TOO_MANY = re.compile(
    r"^TOO MANY LOGIN TRIES \((?P<n>\d{1,9})\) (?P<prep>on|FROM) '?(?P<where>[^'\s]+)'?"
    r"(?: from '(?P<host>[^']*)')? FOR '?(?P<user>[^',\s]+)'?(?:,\s*(?P<why>.*))?$"
)

# --- FTP servers -------------------------------------------------------------------------
RE_FTP_LOGIN = re.compile(
    r"^(?P<anon>ANONYMOUS )?FTP LOGIN (?:(?P<refused>REFUSED|FAILED) (?:\((?P<why>[^)]*)\) )?)?FROM "
    r"(?P<host>[^\s,]+)(?: \[(?P<ip>[^\]]*)\])?(?:, | as )(?P<user>.*)$"
)
RE_VSFTPD_LOGIN = re.compile(r'^\[(?P<user>[^\]]*)\] (?P<ok>OK|FAIL) LOGIN: Client "(?P<ip>[^"]*)"(?:, (?P<why>.*))?$')
RE_PROFTPD_LOGIN = re.compile(
    r"^(?:\S+ )?\([^\[\s]*\[(?P<ip>[^\]]+)\]\)(?: -|:) (?:USER (?P<user>\S+?)(?P<fail> \(Login failed\))?: (?P<why>.*)"
    r"|ANON (?P<anon>\S+): (?P<anon_why>Login successful\.))$"
)

# --- klogind -----------------------------------------------------------------------------
RE_KLOGIND_FAILED = re.compile(r"^Authentication failed from (?P<ip>\S+) \((?P<host>[^)]*)\): ?(?P<why>.*)$")


def clip(text: str | None, n: int = MAX_FIELD) -> str | None:
    """``text`` without control characters, cut to ``n`` characters (None stays None)."""
    if text is None:
        return None
    text = _CTRL.sub("?", text)
    return text if len(text) <= n else text[: n - 1] + "…"


def to_ip(text: str | None, details: dict[str, Any]) -> str | None:
    """An IP address, or None (a host name from ``UseDNS yes`` goes to details)."""
    if not text or text == "(null)":
        return None
    try:
        return str(ipaddress.ip_address(text.strip("[]").removeprefix("::ffff:")))
    except ValueError:
        details["host"] = clip(text, 256)
        return None


def to_int(text: str | None) -> int | None:
    return int(text) if text else None


def make_row(user: str, action: str, result: int, ip: str | None, details: dict[str, Any]) -> dict[str, Any] | None:
    """A ``user_activity`` row (None without a user name); long names cut and flagged."""
    user = user.strip()
    if not user:
        return None
    if len(user) > MAX_USER:
        details["user_truncated"] = True
    return {
        "user": clip(user, MAX_USER),
        "ip": ip,
        "action": action,
        "result": result,
        "details": {k: v for k, v in details.items() if v is not None},
    }


# --- PAM ---------------------------------------------------------------------------------
def pam_fields(kv: str) -> dict[str, str]:
    """``logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.7  user=root`` as a dict (empty
    values left out)."""
    return {k: v for k, v in _KV.findall(kv) if v}


def pam_failure(service: str, kv: str, attempts: int | None = None, module: str | None = None) -> dict[str, Any] | None:
    """A PAM ``authentication failure`` (or ``N more``) line of ``service``: the attempted user
    from ``user=``, the address from ``rhost=``."""
    f = pam_fields(kv)
    details: dict[str, Any] = {
        "service": service,
        "tty": clip(f.get("tty"), 256),
        "pam_module": module,
        "attempts": attempts,
    }
    ip = to_ip(f.get("rhost"), details)
    base = service.split("-")[0]
    if base in ("su", "sudo"):
        who = f.get("ruser") or f.get("logname")
        if not who:
            return None
        details["target_user"] = clip(f.get("user"), 256)
        return make_row(who, base, 401, ip, details)
    user = f.get("user")
    if not user:
        return None
    return make_row(user, "login_failed", 401, ip, details)


def pam_session_action(service: str, what: str) -> str:
    """The action of a PAM session line of a service that is not sshd, sudo or su."""
    if service in LOGIN_SERVICES or service in FTP_SERVICES:
        return "login" if what == "opened" else "logout"
    return "session_open" if what == "opened" else "session_close"


# -- sudo ------------------------------------------------------------------------------
def sudo_line(message: str) -> dict[str, Any] | None:
    """sudo's own lines: ``U : TTY=… ; PWD=… ; USER=… ; COMMAND=…`` and its failure notes."""
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
        "tty": clip(fields.get("TTY"), 256),
        "cwd": clip(fields.get("PWD") or fields.get("CWD")),
        "target_user": clip(fields.get("USER"), 256),
        "target_group": clip(fields.get("GROUP"), 256),
        "command": clip(fields.get("COMMAND")),
    }
    if not notes:
        return make_row(user, "sudo", 200, None, details)
    note = notes[0]
    details["reason"] = clip(note, 512)
    if am := RE_SUDO_ATTEMPTS.match(note):
        details["attempts"] = int(am["n"])
        return make_row(user, "sudo", 401, None, details)
    if note in ("a password is required", "no password was provided"):
        return make_row(user, "sudo", 401, None, details)
    low = note.lower()
    if "not in sudoers" in low or "not allowed" in low or "not allowed to" in low:
        return make_row(user, "sudo", 403, None, details)
    if "authentication" in low or "error" in low or "unable" in low:
        return make_row(user, "sudo", 500, None, details)
    return None


# -- su --------------------------------------------------------------------------------
def su_line(message: str) -> dict[str, Any] | None:
    """su's own lines (util-linux and shadow)."""
    if m := RE_SU.match(message):
        details = {"service": "su", "target_user": m["target"], "tty": clip(m["tty"], 256)}
        return make_row(m["user"], "su", 401 if m["failed"] else 200, None, details)
    if m := RE_SU_SHADOW.match(message):
        details = {"service": "su", "target_user": m["target"]}
        return make_row(m["user"], "su", 200 if m["how"] == "Successful" else 401, None, details)
    return None


# --- login -------------------------------------------------------------------------------
def _where(prep: str, where: str, host: str | None, details: dict[str, Any]) -> str | None:
    """util-linux's ``FROM`` names the remote host ((null) when local) or a tty; shadow's ``on``
    a tty and ``from`` a host. Returns the IP address when there is one."""
    if prep == "on":
        details["tty"] = clip(where, 256)
        return to_ip(host, details)
    if where.startswith(("tty", "/dev/", "pts/", "ttyS", "console")):
        details["tty"] = clip(where, 256)
        return to_ip(host, details)
    return to_ip(where, details)


def login_line(message: str) -> dict[str, Any] | None:
    """login(1)'s own lines (util-linux and shadow)."""
    if m := RE_ROOT_LOGIN.match(message):
        details: dict[str, Any] = {"service": "login", "tty": clip(m["tty"], 256)}
        return make_row("root", "login", 200, to_ip(m["host"], details), details)
    if m := RE_LOGIN_ON.match(message):
        details = {"service": "login", "tty": clip(m["tty"], 256)}
        return make_row(m["user"], "login", 200, to_ip(m["host"], details), details)
    if m := RE_LOGIN_FAILED.match(message):
        details = {"service": "login", "reason": clip(m["why"], 512), "attempt": to_int(m["n1"] or m["n2"])}
        ip = _where(m["prep"], m["where"], m["host"], details)
        return make_row(m["user"], "login_failed", 401, ip, details)
    if m := RE_TOO_MANY.match(message):
        details = {"service": "login", "reason": clip(m["why"], 512), "attempts": int(m["n"])}
        ip = _where(m["prep"], m["where"], m["host"], details)
        return make_row(m["user"], "login_failed", 401, ip, details)
    return None


# --- FTP servers -------------------------------------------------------------------------
def ftpd_line(service: str, message: str) -> dict[str, Any] | None:
    """wu-ftpd / BSD ftpd ``FTP LOGIN`` lines, vsftpd's ``OK LOGIN`` and ProFTPD's ``USER`` lines."""
    if m := RE_FTP_LOGIN.match(message):
        details: dict[str, Any] = {"service": service}
        ip = to_ip(m["ip"], details) if m["ip"] else to_ip(m["host"], details)
        if m["ip"] and m["host"] != m["ip"]:
            details["host"] = clip(m["host"], 256)
        if m["anon"]:
            details["anonymous_id"] = clip(m["user"], 256)  # the "password" an anonymous user gives
            return make_row("anonymous", "login", 200, ip, details)
        if m["refused"]:
            details["reason"] = clip(m["why"], 512)
            return make_row(m["user"], "login_failed", 403 if m["refused"] == "REFUSED" else 401, ip, details)
        return make_row(m["user"], "login", 200, ip, details)
    if m := RE_VSFTPD_LOGIN.match(message):
        details = {"service": service, "reason": clip(m["why"], 512)}
        ok = m["ok"] == "OK"
        return make_row(
            m["user"], "login" if ok else "login_failed", 200 if ok else 401, to_ip(m["ip"], details), details
        )
    if m := RE_PROFTPD_LOGIN.match(message):
        details = {"service": service}
        ip = to_ip(m["ip"], details)
        if m["anon"]:
            details["anonymous"] = True
            return make_row(m["anon"], "login", 200, ip, details)
        why = m["why"]
        if m["fail"]:
            details["reason"] = clip(why, 512)
            return make_row(m["user"], "login_failed", 401, ip, details)
        if why.startswith("Login successful"):
            return make_row(m["user"], "login", 200, ip, details)
    return None


# --- klogind -----------------------------------------------------------------------------
def klogind_line(message: str) -> dict[str, Any] | None:
    """Kerberos rlogin's failures: the line names no user (``unknown``, flagged)."""
    if m := RE_KLOGIND_FAILED.match(message):
        details: dict[str, Any] = {"service": "klogind", "reason": clip(m["why"], 512), "user_unknown": True}
        ip = to_ip(m["ip"], details)
        if m["host"] and m["host"] != m["ip"]:
            details["host"] = clip(m["host"], 256)
        return make_row("unknown", "login_failed", 401, ip, details)
    return None
