"""The journald collector's serialized fields: what repeats from entry to entry (program,
facility, unit, host …) as one JSON fragment per distinct tuple of raw values, and the pid."""

from __future__ import annotations

from typing import Any

import orjson

#: syslog facility numbers (``SYSLOG_FACILITY``) to names
FACILITIES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)
_FACILITY_BY_BYTES = {str(i).encode(): name for i, name in enumerate(FACILITIES)}
#: journal fields kept in ``data.extra`` (and under which name); the host and the facility are
#: ``data.hostname`` and ``data.facility``, and are not repeated there
_EXTRA_FIELDS = (
    ("_SYSTEMD_UNIT", "unit"),
    ("_TRANSPORT", "transport"),
    ("_BOOT_ID", "boot_id"),
    ("_UID", "uid"),
)
_NAME_CACHE_MAX = 4096


def _decode_name(cache: dict[bytes, str], value: bytes) -> str:
    """Decode a short, repetitive field value (unit, host, program …), cut to 256 characters."""
    text = value.decode("utf-8", "replace")[:256]
    if len(cache) >= _NAME_CACHE_MAX:
        cache.clear()
    cache[value] = text
    return text


def pid_json(pid_b: bytes | None) -> tuple[bytes, int | None]:
    """A pid field's value as JSON and as a number (None: absent, not a number or out of range)."""
    pid: int | None = None
    if pid_b is not None:
        try:
            pid = int(pid_b)
        except ValueError:
            pid = None
        else:
            if not 0 <= pid < 1 << 31:
                pid = None
    return (b"null" if pid is None else b"%d" % pid), pid


def fragment(names: dict[bytes, str], source: str,
             key: tuple[bytes | None, ...]) -> tuple[bytes, bytes, str, dict[str, Any]]:
    """``(JSON up to the pid's value, JSON after it, program, data fields but the pid)`` for one
    tuple of raw field values: program, facility, unit, hostname, transport, boot id and uid
    (see the collector's ``_read_chunk``); ``names`` caches decoded values, ``source`` is the
    journal's name."""
    program, fac, unit, host, *extra_values = key
    # a field value may be None (absent); .get gives None then
    facility = _FACILITY_BY_BYTES.get(fac)  # type: ignore[arg-type]
    extra: dict[str, Any] = {}
    for (_, name), value in zip(_EXTRA_FIELDS, (unit, *extra_values), strict=True):
        if value is not None:
            text = names.get(value)
            extra[name] = text if text is not None else _decode_name(names, value)
    hostname = None if host is None else (names.get(host) or _decode_name(names, host))
    prog = "unknown" if program is None else (names.get(program) or _decode_name(names, program))
    fields = {"program": prog, "pid": None, "facility": facility, "hostname": hostname,
              "source": source, "extra": extra}
    # the program's JSON string escapes its quotes: the first "pid":null is the field's
    head, _, tail = orjson.dumps(fields)[1:-1].partition(b'"pid":null')
    del fields["pid"]
    return b"," + head + b'"pid":', tail, prog, fields
