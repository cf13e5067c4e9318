"""Probes of the fleet sinks for ``doctor``: can the OTLP endpoint or the NATS servers be reached,
do they take the credentials, does the stream exist. Each finding is ``(name, status, detail, fix)``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import nats.errors
import nats.js.errors

from agent.config import SinkConfig
from agent.errors import CredentialsRefused

#: (check name, "OK" | "WARN" | "FAIL", what was found, how to fix it or None)
Finding = tuple[str, Literal["OK", "WARN", "FAIL"], str, str | None]


def probe_sink(cfg: SinkConfig, version: str) -> list[Finding]:
    """The findings for an ``otlp`` or ``nats`` sink (none for the others)."""
    if cfg.type == "otlp":
        return asyncio.run(_probe_otlp(cfg, version))
    if cfg.type == "nats":
        return asyncio.run(_probe_nats(cfg))
    return []


async def _probe_otlp(cfg: SinkConfig, version: str) -> list[Finding]:
    """POST an export request with no records: what the endpoint answers says it all."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from agent.shipping.sinks.otlp import OtlpSink, logs_url

    sink = OtlpSink(cfg, version)
    url = logs_url(cfg.url)
    json_body = cfg.otlp.encoding == "json"
    body = b"{}" if json_body else ExportLogsServiceRequest().SerializeToString()
    headers = sink.request_headers("application/json" if json_body else "application/x-protobuf")
    headers.pop("Content-Encoding", None)  # the probe is sent as it is
    try:
        answer = await sink.exchange(url, body, headers)
    finally:
        await sink.close()
    if isinstance(answer, str):
        return [("otlp", "FAIL", f"cannot reach {url}: {answer}", "check sink.url (the collector's OTLP/HTTP "
                 "port, 4318 by default), sink.tls and firewalls")]
    if 200 <= answer.status < 300:
        return [("otlp", "OK", f"{url} takes OTLP logs ({cfg.otlp.encoding}); answered {answer.status}", None)]
    if answer.status in (401, 403):
        return [("otlp", "FAIL", f"{url} answered {answer.status}: the credentials were refused",
                 "check sink.token_file and sink.headers")]
    if answer.status in (404, 405):
        return [("otlp", "FAIL", f"{url} answered {answer.status}: not an OTLP/HTTP logs endpoint",
                 "set sink.url to the collector's base URL, e.g. http://collector:4318")]
    if answer.status == 415:
        return [("otlp", "FAIL", f"{url} does not take {cfg.otlp.encoding}", "set sink.otlp.encoding")]
    return [("otlp", "WARN", f"{url} answered {answer.status}; batches wait in the spool", "retry later")]


async def _probe_nats(cfg: SinkConfig) -> list[Finding]:
    """Connect (reachability, credentials), then look the stream up."""
    from agent.shipping.sinks.nats import connect, stream_subjects

    servers = ", ".join(cfg.nats.servers)
    try:
        nc = await connect(cfg, name="alpacon-agent doctor")
    except CredentialsRefused as exc:
        return [("nats", "FAIL", f"{servers} refuse the credentials: {exc}",
                 "check sink.token_file or sink.nats.creds_file")]
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        return [("nats", "FAIL", f"cannot reach {servers}: {type(exc).__name__}: {exc}",
                 "check sink.nats.servers, sink.tls and firewalls")]
    found: list[Finding] = [("nats", "OK", f"connected to {nc.connected_url.netloc if nc.connected_url else servers}",
                             None)]
    try:
        js = nc.jetstream(timeout=min(cfg.timeout_s, 10.0))
        name = cfg.nats.stream
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            if cfg.nats.auto_create_stream:
                found.append(("nats-stream", "WARN", f"stream {name!r} does not exist; the agent creates it "
                              f"({cfg.nats.replicas} replicas, subjects {stream_subjects(cfg.nats)})",
                              "create it yourself to choose its retention and placement"))
            else:
                found.append(("nats-stream", "FAIL", f"stream {name!r} does not exist and "
                              "sink.nats.auto_create_stream is off", f"create the stream {name!r}"))
            return found
        window = info.config.duplicate_window or 0.0
        found.append(("nats-stream", "OK", f"stream {name!r}: {info.config.num_replicas} replicas, "
                      f"duplicate window {window:.0f}s, {info.state.messages} messages", None))
        if window < 60:
            found.append(("nats-dedup", "WARN", f"the duplicate window of {name!r} is {window:.0f}s: a batch "
                          "replayed after a longer outage is stored twice", "raise the stream's duplicate_window"))
    except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
        found.append(("nats-stream", "FAIL", f"JetStream does not answer: {type(exc).__name__}: {exc}",
                      "enable JetStream on the servers (jetstream {} in their config)"))
    finally:
        await nc.close()
    return found
