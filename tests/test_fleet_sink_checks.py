"""check-config and doctor for the fleet sinks (otlp, nats): hostile settings refused with the key's
path, and doctor's findings against real servers (a NATS server, an OTLP endpoint) and dead ports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness import BIN
from tests.nats_cluster import NatsCluster
from tests.otlp_collector import OtlpCollector
from tests.support import free_port


def _config(tmp: Path, sink: dict) -> Path:
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump({"server": "web-01", "state_dir": str(tmp / "state"), "sink": sink,
                                    "hook": {"socket": str(tmp / "hook.sock")}}))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "alpacon-agent"), *args], capture_output=True, text=True, timeout=60)


def _doctor(path: Path, name: str) -> list[dict]:
    r = _cli("doctor", "--config", str(path), "--json")
    return [c for c in json.loads(r.stdout) if c["name"].startswith(name)]


class TestCheckConfig:
    @pytest.mark.parametrize(("sink", "needle"), [
        ({"type": "nats", "nats": {"servers": ["http://127.0.0.1:4222"]}}, "sink.nats.servers"),
        ({"type": "nats", "nats": {"servers": []}}, "sink.nats.servers"),
        ({"type": "nats", "nats": {"stream": "a.b c"}}, "sink.nats.stream"),
        ({"type": "nats", "nats": {"subject": "alpacon.{server}.>"}}, "sink.nats.subject"),
        ({"type": "nats", "nats": {"subject": "alpacon.{host}.{kind}"}}, "sink.nats.subject"),
        ({"type": "nats", "nats": {"subject": "alpacon..{kind}"}}, "sink.nats.subject"),
        ({"type": "nats", "nats": {"creds_file": "/nonexistent/x.creds"}}, "sink.nats.creds_file"),
        ({"type": "nats", "nats": {"max_pending": 0}}, "sink.nats.max_pending"),
        ({"type": "nats", "nats": {"replicas": 7}}, "sink.nats.replicas"),
        ({"type": "nats", "nats": {"bogus": 1}}, "sink.nats.bogus"),
        ({"type": "otlp", "otlp": {"encoding": "xml"}}, "sink.otlp.encoding"),
        ({"type": "otlp", "url": "grpc://collector:4317"}, "sink.url"),
        ({"type": "otlp", "headers": {"X-Bad": "a\r\nInjected: yes"}}, "sink.headers"),
        ({"type": "otlp", "headers": {"Bad Name": "v"}}, "sink.headers"),
        ({"type": "otlp", "headers": {"X-Big": "v" * 9000}}, "sink.headers"),
        ({"type": "kafka"}, "sink.type"),
    ])
    def test_hostile_settings_are_refused_with_the_key(self, tmp_path, sink, needle):
        """Each bad fleet-sink setting fails check-config, naming the key, and nothing starts."""
        r = _cli("check-config", "--config", str(_config(tmp_path, sink)))
        assert r.returncode != 0
        assert needle in r.stdout + r.stderr, r.stdout + r.stderr

    def test_good_fleet_settings_pass(self, tmp_path):
        """The documented settings of both sinks are valid."""
        for sink in ({"type": "otlp", "url": "http://127.0.0.1:4318", "otlp": {"encoding": "json"},
                      "headers": {"X-Scope-OrgID": "fleet-1"}},
                     {"type": "nats", "nats": {"servers": ["nats://127.0.0.1:4222", "tls://10.0.0.2:4222"],
                                               "stream": "AUDIT", "subject": "audit.{kind}.{server}",
                                               "replicas": 3, "duplicate_window_s": 7200}}):
            r = _cli("check-config", "--config", str(_config(tmp_path, sink)))
            assert r.returncode == 0, r.stdout + r.stderr
            assert f"sink={sink['type']}" in r.stdout


class TestDoctor:
    def test_nats_reachable_stream_missing_then_present(self, tmp_path):
        """Against a real server: connected; the stream missing (to be created) is a warning, missing
        with auto-create off a failure; a dead port fails."""
        with NatsCluster(tmp_path / "nats", n=1) as cluster:
            found = _doctor(_config(tmp_path, {"type": "nats", "nats": {"servers": cluster.urls}}), "nats")
            assert [(c["name"], c["status"]) for c in found] == [("nats", "OK"), ("nats-stream", "WARN")]
            found = _doctor(_config(tmp_path, {"type": "nats", "nats": {"servers": cluster.urls,
                                                                         "auto_create_stream": False}}), "nats")
            assert [(c["name"], c["status"]) for c in found] == [("nats", "OK"), ("nats-stream", "FAIL")]
        dead = [f"nats://127.0.0.1:{free_port()}"]
        found = _doctor(_config(tmp_path, {"type": "nats", "nats": {"servers": dead}}), "nats")
        assert [(c["name"], c["status"]) for c in found] == [("nats", "FAIL")]
        assert "cannot reach" in found[0]["detail"]

    def test_nats_wrong_token_is_named(self, tmp_path):
        """A server that refuses the token: doctor says the credentials were refused."""
        with NatsCluster(tmp_path / "nats", n=1, token="good-token-1") as cluster:
            token = tmp_path / "tok"
            token.write_text("bad-token-2\n")
            found = _doctor(_config(tmp_path, {"type": "nats", "token_file": str(token),
                                               "nats": {"servers": cluster.urls}}), "nats")
            assert [(c["name"], c["status"]) for c in found] == [("nats", "FAIL")]
            assert "refuse the credentials" in found[0]["detail"]

    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_otlp_endpoint_reachable_and_dead_port(self, tmp_path, encoding):
        """A real OTLP endpoint takes the empty probe; a dead port fails."""
        collector = OtlpCollector().start()
        try:
            found = _doctor(_config(tmp_path, {"type": "otlp", "url": collector.url,
                                               "otlp": {"encoding": encoding}}), "otlp")
            assert [(c["name"], c["status"]) for c in found] == [("otlp", "OK")], found
        finally:
            collector.stop()
        found = _doctor(_config(tmp_path, {"type": "otlp", "url": f"http://127.0.0.1:{free_port()}"}), "otlp")
        assert [(c["name"], c["status"]) for c in found] == [("otlp", "FAIL")]
