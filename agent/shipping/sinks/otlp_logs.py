"""Events as OpenTelemetry log records: a wire document turned into an ``ExportLogsServiceRequest``.

Built on the official ``opentelemetry-proto`` messages. One ``LogRecord`` per event: its time
from the event's ``ts``, the observed time when the agent read (spooled) it, the severity from
the syslog level (mapped as the OpenTelemetry log data model's appendix B does) or from the
audit record's outcome, the message as body for ``system_log`` and the event's ``data`` as a
key-value map for the other kinds, and the view's fields as semantic-convention attributes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber

SCOPE_NAME = "alpacon-agent"

#: syslog level -> (SeverityNumber, severityText): OTel log data model, appendix B (syslog column)
SYSLOG_SEVERITY: dict[str, SeverityNumber.ValueType] = {
    "debug": SeverityNumber.SEVERITY_NUMBER_DEBUG,
    "info": SeverityNumber.SEVERITY_NUMBER_INFO,
    "notice": SeverityNumber.SEVERITY_NUMBER_INFO2,
    "warning": SeverityNumber.SEVERITY_NUMBER_WARN,
    "error": SeverityNumber.SEVERITY_NUMBER_ERROR,
    "crit": SeverityNumber.SEVERITY_NUMBER_ERROR2,
    "alert": SeverityNumber.SEVERITY_NUMBER_ERROR3,
    "emerg": SeverityNumber.SEVERITY_NUMBER_FATAL,
}
_TEXT = {SeverityNumber.SEVERITY_NUMBER_INFO: "INFO", SeverityNumber.SEVERITY_NUMBER_WARN: "WARN",
         SeverityNumber.SEVERITY_NUMBER_ERROR: "ERROR"}

#: per kind: (data field, attribute name) where the semantic conventions name the field
ATTRIBUTES: dict[str, tuple[tuple[str, str], ...]] = {
    "system_log": (("pid", "process.pid"), ("program", "process.executable.name"), ("facility", "syslog.facility")),
    "websh_session": (("username", "user.name"), ("remote_ip", "client.address"), ("session_id", "session.id"),
                      ("browser", "user_agent.original")),
    "websh_command": (("session_id", "session.id"), ("command", "process.command_line"),
                      ("exit_code", "process.exit.code")),
    "webftp_transfer": (("username", "user.name"), ("remote_ip", "client.address"), ("path", "file.path"),
                        ("object_name", "file.name"), ("size", "file.size"), ("session_id", "session.id")),
    "command": (("user", "user.name"), ("line", "process.command_line"), ("exit_code", "process.exit.code")),
    "user_activity": (("user", "user.name"), ("ip", "client.address")),
    "metrics": (),
}


def any_value(value: Any) -> AnyValue:
    """A JSON value as an ``AnyValue`` (null: an empty one)."""
    v = AnyValue()
    if isinstance(value, str):
        v.string_value = value
    elif isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            v.int_value = value
        else:
            v.string_value = str(value)
    elif isinstance(value, float):
        v.double_value = value
    elif isinstance(value, dict):
        v.kvlist_value.values.extend(KeyValue(key=str(k), value=any_value(x)) for k, x in value.items())
    elif isinstance(value, list):
        v.array_value.values.extend(any_value(x) for x in value)
    return v


def ts_nanos(ts: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp with milliseconds (exact to the ms)."""
    when = datetime.fromisoformat(ts)
    return (int(when.timestamp()) * 1000 + when.microsecond // 1000) * 1_000_000


def severity(kind: str, data: dict[str, Any]) -> tuple[SeverityNumber.ValueType, str]:
    """(SeverityNumber, severityText) of an event."""
    if kind == "system_log":
        level = str(data.get("level", "info"))
        return SYSLOG_SEVERITY.get(level, SeverityNumber.SEVERITY_NUMBER_UNSPECIFIED), level
    number: SeverityNumber.ValueType = SeverityNumber.SEVERITY_NUMBER_INFO
    if kind == "user_activity":
        result = data.get("result")
        if isinstance(result, int) and result >= 500:
            number = SeverityNumber.SEVERITY_NUMBER_ERROR
        elif isinstance(result, int) and result >= 400:
            number = SeverityNumber.SEVERITY_NUMBER_WARN
    elif kind == "command" and data.get("status") in ("failed", "stuck"):
        number = SeverityNumber.SEVERITY_NUMBER_WARN
    elif kind == "webftp_transfer" and data.get("status") not in (None, "success", "ok", "completed"):
        number = SeverityNumber.SEVERITY_NUMBER_WARN
    return number, _TEXT[number]


def log_record(event: dict[str, Any], observed_ns: int) -> LogRecord:
    """The log record of one event."""
    kind = str(event.get("kind", ""))
    data = event.get("data") or {}
    number, text = severity(kind, data)
    rec = LogRecord(time_unix_nano=ts_nanos(event["ts"]), observed_time_unix_nano=observed_ns,
                    severity_number=number, severity_text=text)
    if kind == "system_log":
        rec.body.string_value = str(data.get("message", ""))
    else:
        rec.body.CopyFrom(any_value(data))
    attrs = [KeyValue(key="alpacon.event.id", value=any_value(event["id"])),
             KeyValue(key="alpacon.event.kind", value=any_value(kind))]
    for field, name in ATTRIBUTES.get(kind, ()):
        if data.get(field) is not None:
            attrs.append(KeyValue(key=name, value=any_value(data[field])))
    rec.attributes.extend(attrs)
    rec.event_name = f"alpacon.{kind}"
    return rec


def export_request(document: bytes, spooled_at: float) -> ExportLogsServiceRequest:
    """The OTLP logs request for a wire document: one resource (this agent), one scope, a record per event."""
    doc = orjson.loads(document)
    agent = doc["agent"]
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in (
        ("service.name", "alpacon-agent"), ("service.version", agent.get("version", "")),
        ("host.name", agent.get("hostname", "")), ("alpacon.server", agent.get("server", "")),
        ("alpacon.agent.id", agent.get("id", ""))))
    sl = rl.scope_logs.add()
    sl.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=str(agent.get("version", ""))))
    observed = int(spooled_at * 1e9)
    sl.log_records.extend(log_record(e, observed) for e in doc["events"])
    return req
