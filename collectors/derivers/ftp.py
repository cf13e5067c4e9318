"""WebFTP transfers from FTP servers' transfer logs → ``webftp_transfer``.

:class:`FtpTransferDeriver` is a deriver (see :mod:`collectors.derivers.base`) for lines a file source
read from the logs vsftpd and ProFTPD write (the syslog parser names their programs):

- the standard ``xferlog`` (program ``xferlog``; vsftpd with ``xferlog_std_format=YES``, ProFTPD's
  ``TransferLog``, wu-ftpd): after the time, ``transfer-seconds remote-host bytes file-name type
  action-flag direction access-mode user service auth-method auth-user-id completion``::

      Mon Dec  1 10:00:00 2026 1 198.51.100.7 1048576 /srv/ftp/a.iso b _ o r alice ftp 0 * c

  direction ``o`` download, ``i`` upload, ``d`` delete; completion ``c`` complete, ``i`` incomplete
  (an aborted transfer: ``failed``). Both servers write a blank in a file name as ``_``, so the
  fields after the name are found from the line's end;
- vsftpd's own log (program ``vsftpd``, the default on Debian): ``[alice] OK UPLOAD: Client
  "198.51.100.7", "/home/alice/a.bin", 1024 bytes, 512.00Kbyte/sec`` (and ``FAIL``, ``DOWNLOAD``,
  ``DELETE``, ``MKDIR``, ``RMDIR``, ``RENAME``).

A journal line of vsftpd counts only when its sender is vsftpd running as the user it names
(``collectors.derivers.provenance``); every row carries its ``provenance``. A syslog line
tagged ``xferlog`` (which any local user can send) is not a transfer: only a line
of a file that starts with the transfer log's own time is. vsftpd with ``dual_log_enable=YES``
writes each transfer to both logs: the second line of the same transfer (same user, file, size
and second) is skipped. A row's id is
``stable_id("xfer", <line id>)``. Times are read as local time, or as UTC with
``collectors.ftp.times: utc``
(vsftpd writes UTC unless ``use_localtime=YES``; ProFTPD local time).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.events import make_event, stable_id
from agent.typing import Event
from collectors.derivers.base import Witness, accepted_data, event_origin, line_id
from collectors.derivers.sftp_sessions import uid_of as _uid_of

PROGRAMS = frozenset({"xferlog", "vsftpd"})
MAX_MESSAGE = 16_384
MAX_PATH = 4096

RE_XFERLOG = re.compile(
    r"^(?P<secs>\d{1,10}) (?P<host>\S{1,256}) (?P<size>\d{1,20}) (?P<path>.+) (?P<type>[ab]) (?P<action>\S{1,8}) "
    r"(?P<dir>[oid]) (?P<mode>[arg]) (?P<user>\S*) (?P<service>\S{1,32}) (?P<auth>\d) (?P<authid>\S{1,256})"
    r"(?: (?P<status>[ci]))?$"
)
RE_VSFTPD = re.compile(
    r"^\[(?P<user>[^\]]{1,256})\] (?P<ok>OK|FAIL) (?P<what>UPLOAD|DOWNLOAD|DELETE|MKDIR|RMDIR|RENAME): "
    r'Client "(?P<ip>[^"]{0,256})", "(?P<path>.*)"(?:, (?P<size>\d{1,20}) bytes)?(?:, (?P<rate>[\d.]{1,32})Kbyte/sec)?$'
)
XFER_TYPES = {"o": "download", "i": "upload", "d": "remove"}
VSFTPD_TYPES = {
    "UPLOAD": "upload",
    "DOWNLOAD": "download",
    "DELETE": "remove",
    "MKDIR": "mkdir",
    "RMDIR": "rmdir",
    "RENAME": "rename",
}
ACCESS_MODES = {"a": "anonymous", "g": "guest", "r": "real"}
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def _clip(text: str, n: int = MAX_PATH) -> str:
    text = _CTRL.sub("?", text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _ip(text: str, extra: dict[str, Any]) -> str | None:
    try:
        return str(ipaddress.ip_address(text.removeprefix("::ffff:")))
    except ValueError:
        if text:
            extra["host"] = _clip(text, 256)
        return None


def _object_name(path: str) -> str | None:
    return posixpath.basename(path.rstrip("/")) or None


def parse_xferlog(message: str) -> dict[str, Any] | None:
    """The ``webftp_transfer`` data of one xferlog line (its fields after the time), or None."""
    m = RE_XFERLOG.match(message)
    if m is None:
        return None
    mode = m["mode"]
    extra: dict[str, Any] = {
        "service": m["service"],
        "transfer_type": "ascii" if m["type"] == "a" else "binary",
        "access_mode": ACCESS_MODES[mode],
    }
    user = m["user"]
    if mode == "a":
        extra["anonymous_id"] = _clip(user, 256)  # vsftpd logs the anonymous password (an e-mail) here
        user = "anonymous"
    if not user:
        return None
    if m["action"] != "_":
        extra["action_flag"] = m["action"]
    if m["authid"] != "*":
        extra["auth_user_id"] = _clip(m["authid"], 256)
    path = _clip(m["path"])
    done = m["status"] != "i"
    return {
        "username": _clip(user, 256),
        "type": XFER_TYPES[m["dir"]],
        "path": path,
        "object_name": _object_name(path),
        "size": int(m["size"]),
        "remote_ip": _ip(m["host"], extra),
        "status": "success" if done else "failed",
        "error": None if done else "incomplete transfer",
        "duration_ms": int(m["secs"]) * 1000,
        "source": "xferlog",
        "extra": extra,
    }


def parse_vsftpd(message: str) -> dict[str, Any] | None:
    """The ``webftp_transfer`` data of one vsftpd.log transfer line (after ``[pid N]``), or None."""
    m = RE_VSFTPD.match(message)
    if m is None:
        return None
    extra: dict[str, Any] = {"service": "ftp"}
    if m["rate"]:
        extra["kbyte_per_s"] = float(m["rate"])
    kind = VSFTPD_TYPES[m["what"]]
    path = _clip(m["path"])
    ok = m["ok"] == "OK"
    size = int(m["size"]) if m["size"] else (0 if kind in ("upload", "download") else None)
    return {
        "username": _clip(m["user"], 256),
        "type": kind,
        "path": path,
        "object_name": _object_name(path),
        "size": size,
        "remote_ip": _ip(m["ip"], extra),
        "status": "success" if ok else "failed",
        "error": None if ok else "the server reported a failure",
        "source": "vsftpd",
        "extra": extra,
    }


class FtpTransferDeriver:
    """``system_log`` lines of FTP servers' transfer logs → ``webftp_transfer`` events."""

    name = "ftp"
    #: the lines this deriver can use (see derivers.base.line_gate)
    programs: frozenset[str] = PROGRAMS
    message_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        accept: Callable[[Event], bool] | None = None,
        max_tracked: int = 1024,
        witness: Witness | None = None,
        uid_of: Callable[[str], int | None] = _uid_of,
    ) -> None:
        self.accept = accept
        self.max_tracked = max_tracked
        self.witness = witness if witness is not None else Witness()
        self.uid_of = uid_of
        #: (user, file name with blanks as '_', size, second) of the transfers reported lately
        self._seen: OrderedDict[tuple[Any, ...], bool] = OrderedDict()

    def __call__(self, event: Event) -> list[Event]:
        try:
            data = accepted_data(event, self.accept)
            if data is None:
                return []
            if data.get("program") == "xferlog" and (
                event_origin(event)[0] == "journald" or data.get("hostname") is not None
            ):
                # only a line that starts with the transfer log's own time (no syslog header)
                # is one: "xferlog" as a syslog tag is anyone's (logger -t xferlog)
                return []
            message = data.get("message")
            program = data.get("program")
            if not isinstance(message, str) or not message or len(message) > MAX_MESSAGE:
                return []
            message = message.rstrip("\r\n")
            if program == "xferlog":
                row = parse_xferlog(message)
            elif program == "vsftpd":
                row = parse_vsftpd(message)
            else:
                return []
            if row is None:
                return []
            # a journal line of vsftpd (syslog_enable=YES) is believed from vsftpd's session process,
            # running as the user it names (or root), never from logger -t vsftpd
            prov = self.witness.vouch(event, "vsftpd-session", message)
            if prov is None:
                return []
            if prov.sender is not None and prov.uid not in (0, self.uid_of(row["username"])):
                self.witness.forged_line(event, program, message, f"names {row['username']!r}, sent by uid {prov.uid}")
                return []
            if not self._first(row, event.get("ts")):
                return []
        except Exception:  # a deriver must never break its collector
            return []
        row["extra"] = {k: v for k, v in row["extra"].items() if v is not None}
        row["provenance"] = prov.data()
        return [
            make_event(
                "webftp_transfer",
                {k: v for k, v in row.items() if v is not None},
                ts=event.get("ts"),
                id=stable_id("xfer", line_id(event)),
            )
        ]

    def _first(self, row: dict[str, Any], ts: Any) -> bool:
        """False for the second log line of a transfer already reported (vsftpd's dual log)."""
        key = (row["username"], row["type"], row["path"].replace(" ", "_"), row["size"], str(ts)[:19])
        if key in self._seen:
            return False
        self._seen[key] = True
        while len(self._seen) > self.max_tracked:
            self._seen.popitem(last=False)
        return True
