"""Which sender may have written a line of which program: the rule table the derivers vouch by.

journald stamps every entry with fields its sender cannot set (``_UID``, ``_GID``, ``_PID`` from
the kernel's socket credentials; ``_COMM``, ``_EXE``, ``_CMDLINE``, ``_CAP_EFFECTIVE`` from
``/proc/PID``; ``_SYSTEMD_UNIT``; ``_TRANSPORT``). The journald collector passes them to the
derivers as ``data.extra.sender`` (keys: :data:`SENDER_FIELDS`); a deriver turns a line into an
audit row only when :meth:`SenderRules.check` says the sender fits the program the line names:

============================  ================================================================
program (or message)          the sender must be
============================  ================================================================
sshd, sshd-session, sshd-auth uid 0, running an sshd executable
login, systemd-logind, ftpd,  uid 0, running that executable
vsftpd, proftpd, klogind,
gdm, kdm, xdm
sudo, su                      running that (setuid) executable, logging through syslog or the
                              native protocol (its uid is the invoking user's: the executable
                              is what proves the line)
sftp-server                   running an sftp-server executable (the sftp deriver adds: as the
                              uid of the user the session names, inside a known ssh connection)
internal-sftp                 running an sshd executable (the same additions)
``pam_unix(SERVICE:…)``       the program that runs PAM for SERVICE (sshd, sudo, su, login,
                              systemd, cron …) by the rules above; for another service, a
                              privileged process (uid 0 or ``CAP_SETUID``) — never ``logger``
============================  ================================================================

When a process exits before journald reads its ``/proc`` entry (a zombie), ``_EXE`` is missing
and ``_COMM`` is all that is left: the line then fits when ``_COMM`` is the program's name and
the process was privileged (uid 0 for root programs, ``CAP_SETUID`` in ``_CAP_EFFECTIVE`` for
setuid ones), which an unprivileged user's renamed copy of ``logger`` never is.

Executables are found on this system (:func:`discover_executables`): the known directories of
the Debian, RHEL, SUSE and Arch families, ``PATH``, the running sshd's ``/proc/PID/exe`` and the
``Subsystem sftp`` line of its configuration — never one distribution's paths alone.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

#: journal field -> key in ``data.extra.sender`` (all set by journald, none by the sender)
SENDER_FIELDS: tuple[tuple[str, str], ...] = (
    ("_UID", "uid"), ("_GID", "gid"), ("_PID", "pid"), ("_COMM", "comm"), ("_EXE", "exe"),
    ("_CMDLINE", "cmdline"), ("_CAP_EFFECTIVE", "cap_effective"), ("_SYSTEMD_UNIT", "unit"),
    ("_TRANSPORT", "transport"),
)
#: numeric sender fields
SENDER_INTS = frozenset({"uid", "gid", "pid"})
CAP_SETUID = 7
#: transports through which a process writes its own log lines (not a stream it inherited)
OWN_TRANSPORTS = frozenset({"syslog", "journal"})

SSHD_NAMES = ("sshd", "sshd-session", "sshd-auth")
SEARCH_DIRS = (
    "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin",
    "/usr/lib/openssh", "/usr/libexec/openssh", "/usr/lib/ssh", "/usr/libexec/ssh", "/usr/libexec",
    "/usr/local/libexec", "/usr/local/lib/openssh", "/usr/lib/systemd", "/lib/systemd",
)
_SUBSYSTEM = re.compile(r"^\s*Subsystem\s+sftp\s+(\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Rule:
    """Who may write one program's lines: executables named ``names``, as root or setuid."""

    names: tuple[str, ...]
    #: the sender must run as uid 0
    root: bool = False
    #: a setuid program: privileged (``CAP_SETUID``) while running as the invoking user
    setuid: bool = False


RULES: dict[str, Rule] = {
    **{n: Rule(SSHD_NAMES, root=True) for n in SSHD_NAMES},
    "login": Rule(("login",), root=True),
    "systemd-logind": Rule(("systemd-logind",), root=True),
    "sudo": Rule(("sudo",), setuid=True),
    "su": Rule(("su",), setuid=True),
    "sftp-server": Rule(("sftp-server",)),
    "internal-sftp": Rule(SSHD_NAMES),
    # FTP servers, Kerberos rlogin and display managers log logins as root daemons
    **{n: Rule((n,), root=True) for n in ("ftpd", "in.ftpd", "wu-ftpd", "wu.ftpd", "vsftpd", "proftpd",
                                          "klogind", "kdm", "xdm")},
    "ftp": Rule(("ftpd", "in.ftpd", "vsftpd", "proftpd"), root=True),
    # vsftpd's transfer lines come from its session process, running as the logged-in user
    "vsftpd-session": Rule(("vsftpd",)),
    "gdm": Rule(("gdm", "gdm3"), root=True),
}
#: PAM service -> the program that runs it (pam_unix lines are judged by that program's rule)
PAM_PROGRAMS: dict[str, str] = {
    "sshd": "sshd", "sudo": "sudo", "sudo-i": "sudo", "su": "su", "su-l": "su", "login": "login",
    "remote": "login", "systemd-user": "systemd", "cron": "cron", "crond": "cron", "atd": "atd",
}
PAM_RULES: dict[str, Rule] = {
    "systemd": Rule(("systemd",), root=True),
    "cron": Rule(("cron", "crond"), root=True),
    "atd": Rule(("atd",), root=True),
}
_PAM = re.compile(r"^pam_unix\((?P<service>[\w.\-]+):")


def _int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def sender_of(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sender journald recorded for a line (``data.extra.sender``), or None."""
    extra = data.get("extra")
    sender = extra.get("sender") if isinstance(extra, dict) else None
    return sender if isinstance(sender, dict) else None


def journal_sender(entry: Mapping[str, Any], redact: Callable[[str], str]) -> dict[str, Any]:
    """``data.extra.sender`` of a journal entry (``_Reader._get_all()``): its :data:`SENDER_FIELDS`,
    numbers as numbers, each cut to 4096 bytes, the command line redacted."""
    out: dict[str, Any] = {}
    for name, key in SENDER_FIELDS:
        raw = entry.get(name)
        if type(raw) is list:
            raw = raw[0]
        if not isinstance(raw, bytes):
            continue
        text = raw[:4096].decode("utf-8", "replace")
        if key in SENDER_INTS:
            if text.isdigit():
                out[key] = int(text)
        else:
            out[key] = redact(text) if key == "cmdline" else text
    return out


def with_journal_sender(tail: bytes, fields: dict[str, Any], entry: Mapping[str, Any],
                        redact: Callable[[str], str]) -> tuple[bytes, dict[str, Any]]:
    """A line's serialized data fields ending in its ``extra`` (``tail``) and those fields, both
    with the entry's sender added to ``extra`` (the journald collector's lines for the derivers)."""
    extra = fields["extra"]
    with_sender = {**extra, "sender": journal_sender(entry, redact)}
    dumps = orjson.dumps
    return tail[:-len(dumps(extra))] + dumps(with_sender), dict(fields, extra=with_sender)


def capabilities(sender: Mapping[str, Any]) -> int:
    """The sender's effective capability set (0 when unknown)."""
    caps = sender.get("cap_effective")
    try:
        return int(caps, 16) if isinstance(caps, str) else 0
    except ValueError:
        return 0


def privileged(sender: Mapping[str, Any]) -> bool:
    """Whether the sender ran as root or held ``CAP_SETUID`` (a setuid-root program)."""
    return _int(sender.get("uid")) == 0 or bool(capabilities(sender) >> CAP_SETUID & 1)


def provenance(sender: Mapping[str, Any] | None, path: str | None = None) -> dict[str, Any]:
    """The ``provenance`` object of a derived row: who vouched for the line it came from."""
    if sender is None:
        return {"source": "file", "path": path[:4096]} if path else {"source": "file"}
    out: dict[str, Any] = {"source": "journal"}
    for key in ("uid", "gid", "pid"):
        v = _int(sender.get(key))
        if v is not None:
            out[key] = v
    for key in ("exe", "comm", "unit"):
        v = sender.get(key)
        if isinstance(v, str) and v:
            out[key] = v[:4096]
    return out


class Voucher:
    """Who vouched for a line: a journal sender (``sender``) or a file (``path``; no sender).
    :meth:`data` is the ``provenance`` object of the rows made from the line."""

    __slots__ = ("path", "sender")

    def __init__(self, sender: Mapping[str, Any] | None, path: str | None = None) -> None:
        self.sender = sender
        self.path = path

    @property
    def source(self) -> str:
        return "file" if self.sender is None else "journal"

    @property
    def uid(self) -> int | None:
        return None if self.sender is None else _int(self.sender.get("uid"))

    @property
    def pid(self) -> int | None:
        return None if self.sender is None else _int(self.sender.get("pid"))

    def data(self) -> dict[str, Any]:
        return provenance(self.sender, self.path)


def _exe_path(sender: Mapping[str, Any]) -> str | None:
    exe = sender.get("exe")
    if not isinstance(exe, str) or not exe:
        return None
    # a process whose executable was replaced (a package upgrade) shows "PATH (deleted)"
    return exe.removesuffix(" (deleted)")


@dataclass
class SenderRules:
    """The rule table bound to the executables found on this system (name -> absolute paths)."""

    executables: dict[str, frozenset[str]] = field(default_factory=dict)
    _paths: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict, repr=False)

    def paths(self, names: tuple[str, ...]) -> frozenset[str]:
        """The executables of any of ``names``."""
        found = self._paths.get(names)
        if found is None:
            found = self._paths[names] = frozenset().union(*(self.executables.get(n, ()) for n in names))
        return found

    def rule_for(self, program: str, message: str) -> Rule | None:
        """The rule a line is judged by: its ``pam_unix(SERVICE:…)`` service's program, else its own."""
        if m := _PAM.match(message):
            name = PAM_PROGRAMS.get(m["service"])
            if name is None:
                return None  # another PAM service: any privileged process (see check)
            return RULES.get(name) or PAM_RULES.get(name)
        return RULES.get(program)

    def check(self, program: str, message: str, sender: Mapping[str, Any] | None) -> str | None:
        """None when ``sender`` fits the program the line claims (see the module docstring),
        else why not (one short sentence, kept in the count's log)."""
        if sender is None:
            return "the journal recorded no sender"
        uid = _int(sender.get("uid"))
        if uid is None:
            return "the journal recorded no sender uid"
        is_pam = message.startswith("pam_unix(")
        rule = self.rule_for(program, message)
        if rule is None:
            if is_pam:
                return None if privileged(sender) else f"uid {uid} may not run PAM sessions"
            return f"no rule for program {program!r}"
        if rule.root and uid != 0:
            return f"{rule.names[0]} runs as root, the sender as uid {uid}"
        if not rule.root and sender.get("transport") not in OWN_TRANSPORTS:
            # a stream the process inherited (systemd-cat, a service's stdout) may be another's
            return f"{rule.names[0]} logs through syslog, this came from {sender.get('transport')!r}"
        exe = _exe_path(sender)
        if exe is not None:
            if exe in self.paths(rule.names):
                return None
            return f"{exe} is not a {'/'.join(rule.names)} executable"
        # no _EXE: the process was gone before journald looked; its name and privilege remain
        comm = sender.get("comm")
        if comm not in rule.names:
            return f"the sender {comm!r} is not {'/'.join(rule.names)}"
        if (rule.root or rule.setuid) and not privileged(sender):
            return f"the sender {comm!r} was not privileged"
        return None

    def is_sshd_child(self, sender: Mapping[str, Any] | None) -> bool:
        """An unprivileged sshd process (the session's child running as the user): its lines are
        neither rows nor forgeries (the root monitor logs the same facts)."""
        if sender is None or privileged(sender):
            return False
        exe = _exe_path(sender)
        if exe is not None:
            return exe in self.paths(SSHD_NAMES)
        return sender.get("comm") in SSHD_NAMES


def _running_sshd() -> tuple[set[str], set[str]]:
    """The executables of running sshd processes and the config files they read."""
    exes: set[str] = set()
    configs: set[str] = {"/etc/ssh/sshd_config"}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return exes, configs
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                if f.read().strip() not in SSHD_NAMES:
                    continue
            exes.add(os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-f":
                configs.add(argv[i + 1].decode(errors="replace"))
    return exes, configs


def sftp_servers_in(sshd_config: str) -> set[str]:
    """The sftp-server executables an sshd configuration names (``Subsystem sftp PATH …``)."""
    return {m[1] for m in _SUBSYSTEM.finditer(sshd_config)
            if m[1].startswith("/") and os.path.basename(m[1]) == "sftp-server"}


def discover_executables(extra_dirs: Iterable[str] = ()) -> dict[str, frozenset[str]]:
    """Every executable the rules name, found on this system: ``{name: {absolute paths}}`` (each
    path also in its resolved form, which is what ``_EXE`` shows)."""
    names = {n for r in (*RULES.values(), *PAM_RULES.values()) for n in r.names}
    sshd_exes, configs = _running_sshd()
    dirs = [*extra_dirs, *SEARCH_DIRS, *(os.environ.get("PATH", "").split(os.pathsep))]
    dirs += [os.path.dirname(p) for p in sshd_exes]  # sshd-session lives beside its sshd
    found: dict[str, set[str]] = {n: set() for n in names}
    for name in names:
        for d in dict.fromkeys(x for x in dirs if x.startswith("/")):
            p = shutil.which(name, path=d)
            if p:
                found[name].add(p)
    for exe in sshd_exes:
        base = os.path.basename(exe)
        if base in found:
            found[base].add(exe)
    for conf in configs:
        try:
            with open(conf, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            continue
        found["sftp-server"] |= sftp_servers_in(text)
    return {n: frozenset(ps | {os.path.realpath(p) for p in ps}) for n, ps in found.items()}


def default_rules() -> SenderRules:
    """The rule table with this system's executables."""
    return SenderRules(discover_executables())


__all__ = [
    "PAM_PROGRAMS",
    "RULES",
    "SENDER_FIELDS",
    "Rule",
    "SenderRules",
    "Voucher",
    "default_rules",
    "discover_executables",
    "journal_sender",
    "with_journal_sender",
    "privileged",
    "provenance",
    "sender_of",
    "sftp_servers_in",
]
