"""``alpacon-agent doctor`` and ``setup`` against real files, sockets, journals and servers."""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import pwd
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import doctor, doctor_spool, setup, unit
from agent.config import load_config, parse_config
from agent.spool import NewBatch, Spool
from tests.harness import ReceiverProcess
from tests.parts import write_journal_file
from tests.support import free_port, need_binary, need_root, throwaway_user

REPO = Path(__file__).resolve().parent.parent
DEFAULT_YAML = REPO / "config" / "agent.yaml"


def cli(*argv: str) -> int:
    """Run one of this module's subcommands in-process, as the CLI would."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    doctor.register(sub)
    setup.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def write_config(tmp: Path, data: dict[str, Any]) -> Path:
    base: dict[str, Any] = {
        "state_dir": str(tmp / "state"),
        "hook": {"socket": str(tmp / "hook.sock")},
        "collectors": {"journald": {"directory": str(tmp / "journal")}},
    }
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    (tmp / "journal").mkdir(exist_ok=True)
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(base))
    path.chmod(0o644)
    return path


def token_file(tmp: Path, text: str = "s3cret-token", mode: int = 0o600) -> Path:
    p = tmp / "token"
    p.write_text(text + "\n")
    p.chmod(mode)
    return p


def by_name(results: list[doctor.CheckResult], name: str) -> doctor.CheckResult:
    return next(r for r in results if r.name == name)



@contextlib.contextmanager
def _listening(path: Path, mode: int) -> Iterator[None]:
    """A Unix socket listening at ``path`` with ``mode``, closed on exit."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    os.chmod(path, mode)
    s.listen()
    try:
        yield
    finally:
        s.close()

class _Handler(http.server.BaseHTTPRequestHandler):
    status = 400

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    with ReceiverProcess(tmp_path_factory.mktemp("receiver")) as r:
        yield r


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a throwaway self-signed certificate."""
    openssl = need_binary("openssl")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{srv.server_address[1]}/api/v1/agent/events", cert
    srv.shutdown()


class TestDoctorConfig:
    def test_valid_config_ok(self, tmp_path: Path) -> None:
        """A valid file is OK."""
        results, cfg = doctor.check_config_file(str(write_config(tmp_path, {})))
        assert cfg is not None and results[0].status == "OK"

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("sink: [unclosed", "malformed YAML"),
            ("nonsense_key: 1\n", "nonsense_key: unknown key"),
            ("collectors:\n  journald:\n    min_level: loud\n", "collectors.journald.min_level"),
            ("\x00\xff garbage", "(yaml)"),
            ("- a list\n", "must be a mapping"),
        ],
    )
    def test_bad_config_fails_naming_the_key(self, tmp_path: Path, text: str, needle: str) -> None:
        """Garbage, unknown keys and bad values FAIL with the key's path and a fix."""
        p = tmp_path / "agent.yaml"
        p.write_text(text)
        results, cfg = doctor.check_config_file(str(p))
        assert cfg is None and results[0].status == "FAIL"
        assert needle in results[0].detail and "check-config" in (results[0].fix or "")

    def test_world_writable_config_fails(self, tmp_path: Path) -> None:
        """A config others can write is a FAIL (anyone could redirect the audit trail)."""
        p = write_config(tmp_path, {})
        p.chmod(0o666)
        results, _ = doctor.check_config_file(str(p))
        assert by_name(results, "config-perms").status == "FAIL"

    def test_default_config_file_is_valid_and_complete(self) -> None:
        """The shipped agent.yaml validates, and uncommenting every option gives the defaults."""
        import re

        load_config(DEFAULT_YAML)
        text = DEFAULT_YAML.read_text()
        full = yaml.safe_load(re.sub(r"(?m)^(\s*)#(?=[A-Za-z_])", r"\1", text))
        shipped = parse_config(full).model_dump()
        defaults = parse_config({}).model_dump()
        shipped.pop("server")
        defaults.pop("server")
        assert shipped == defaults


class TestDoctorToken:
    def _cfg(self, tmp: Path, **sink: Any) -> Any:
        return parse_config({"sink": {"url": "https://ws.example.com/api/v1/agent/events", **sink}})

    def test_good_token_ok(self, tmp_path: Path) -> None:
        """A root-owned 0600 token is OK."""
        need_root()
        cfg = self._cfg(tmp_path, token_file=str(token_file(tmp_path)))
        assert doctor.check_token(cfg)[0].status == "OK"

    def test_readable_by_others_fails(self, tmp_path: Path) -> None:
        """Mode 0644 FAILs with the chmod that fixes it."""
        cfg = self._cfg(tmp_path, token_file=str(token_file(tmp_path, mode=0o644)))
        r = doctor.check_token(cfg)[0]
        assert r.status == "FAIL" and r.fix == f"chmod 600 {tmp_path / 'token'}"

    def test_not_owned_by_root_fails(self, tmp_path: Path) -> None:
        """A token owned by another user (a real one) FAILs: the config naming it is refused, with the chown."""
        need_root()
        t = token_file(tmp_path)
        with throwaway_user("adr") as user:
            os.chown(t, pwd.getpwnam(user).pw_uid, -1)
            cfg = write_config(tmp_path, {"sink": {"url": "https://ws.example.com/x", "token_file": str(t)}})
            r = by_name(list(doctor.run_checks(str(cfg))), "config")
        assert r.status == "FAIL" and "sink.token_file" in r.detail and f"chown root:root {t}" in r.detail

    def test_empty_or_vanished_token_fails(self, tmp_path: Path) -> None:
        """An empty token file, or one deleted after the config was loaded, FAILs."""
        t = token_file(tmp_path, text="   ")
        cfg = self._cfg(tmp_path, token_file=str(t))
        assert doctor.check_token(cfg)[0].status == "FAIL"
        t.unlink()
        assert "No such file" in doctor.check_token(cfg)[0].detail

    def test_no_token_remote_fails_local_warns(self, tmp_path: Path) -> None:
        """No token: FAIL for a remote backend, WARN for a loopback one."""
        assert doctor.check_token(self._cfg(tmp_path))[0].status == "FAIL"
        local = parse_config({"sink": {"url": "http://127.0.0.1:1/x"}})
        assert doctor.check_token(local)[0].status == "WARN"

    def test_file_sink_needs_no_token(self, tmp_path: Path) -> None:
        """A file sink has no token to check."""
        cfg = parse_config({"sink": {"type": "file", "path": str(tmp_path / "out.jsonl")}})
        assert doctor.check_token(cfg)[0].status == "OK"


class TestDoctorHook:
    def _cfg(self, tmp: Path) -> Any:
        return parse_config({"hook": {"socket": str(tmp / "hook.sock")}})

    def test_missing_socket_warns_when_agent_stopped(self, tmp_path: Path) -> None:
        """No socket and no running service: WARN with how to start it."""
        r = doctor.check_hook(self._cfg(tmp_path), None)[0]
        assert r.status == "WARN" and "start" in (r.fix or "")

    def test_missing_socket_fails_when_service_active(self, tmp_path: Path) -> None:
        """No socket while the service is active: FAIL."""
        assert doctor.check_hook(self._cfg(tmp_path), "active")[0].status == "FAIL"

    def test_listening_socket_ok(self, tmp_path: Path) -> None:
        """A listening Unix socket with the configured mode is OK."""
        with _listening(tmp_path / "hook.sock", 0o660):
            results = doctor.check_hook(self._cfg(tmp_path), None)
        assert [r.status for r in results] == ["OK"]

    def test_stale_socket_fails(self, tmp_path: Path) -> None:
        """A socket file nobody listens on (a crashed agent) FAILs."""
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / "hook.sock"))
        s.close()
        r = doctor.check_hook(self._cfg(tmp_path), None)
        assert r[0].status == "FAIL" and "stale" in r[0].detail

    def test_regular_file_in_place_of_socket_fails(self, tmp_path: Path) -> None:
        """A regular file where the socket should be FAILs."""
        (tmp_path / "hook.sock").write_text("x")
        assert doctor.check_hook(self._cfg(tmp_path), None)[0].status == "FAIL"

    def test_mode_mismatch_warns(self, tmp_path: Path) -> None:
        """A socket whose mode differs from the config gets a WARN."""
        with _listening(tmp_path / "hook.sock", 0o666):
            results = doctor.check_hook(self._cfg(tmp_path), None)
        assert [r.status for r in results] == ["OK", "WARN"]


class TestDoctorBackend:
    def _cfg(self, url: str, token: Path | None = None, **sink: Any) -> Any:
        data: dict[str, Any] = {"url": url, **sink}
        if token is not None:
            data["token_file"] = str(token)
        return parse_config({"sink": data})

    def test_reference_receiver_with_right_token_ok(self, tmp_path: Path, receiver: ReceiverProcess) -> None:
        """The reference receiver refuses the probe with 400: reachable and token accepted."""
        t = token_file(tmp_path, receiver.token)
        r = doctor.check_backend(self._cfg(receiver.ingest_url, t))[0]
        assert r.status == "OK" and "400" in r.detail

    def test_wrong_token_fails(self, tmp_path: Path, receiver: ReceiverProcess) -> None:
        """401 from the backend is a FAIL naming the token."""
        t = token_file(tmp_path, "wrong")
        r = doctor.check_backend(self._cfg(receiver.ingest_url, t))[0]
        assert r.status == "FAIL" and "token was refused" in r.detail

    def test_wrong_path_fails(self, tmp_path: Path, receiver: ReceiverProcess) -> None:
        """A URL that is not the ingest endpoint FAILs with a hint about the path."""
        t = token_file(tmp_path, receiver.token)
        r = doctor.check_backend(self._cfg(receiver.url + "/nothing-here", t))[0]
        assert r.status == "FAIL" and "/api/v1/agent/events" in (r.fix or "")

    def test_nothing_listening_fails(self) -> None:
        """A closed port FAILs with 'cannot reach'."""
        r = doctor.check_backend(self._cfg(f"http://127.0.0.1:{free_port()}/x"))[0]
        assert r.status == "FAIL" and "cannot reach" in r.detail

    def test_silent_server_times_out(self) -> None:
        """A server that accepts and never answers FAILs within the sink timeout."""
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        try:
            cfg = self._cfg(f"http://127.0.0.1:{srv.getsockname()[1]}/x", timeout_s=0.5)
            r = doctor.check_backend(cfg)[0]
        finally:
            srv.close()
        assert r.status == "FAIL"

    def test_garbage_answer_fails(self) -> None:
        """A server answering bytes that are not HTTP FAILs cleanly."""
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def serve() -> None:
            conn, _ = srv.accept()
            conn.recv(65536)
            conn.sendall(b"\x00\xffnot http at all\r\n\r\n")
            conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            r = doctor.check_backend(self._cfg(f"http://127.0.0.1:{srv.getsockname()[1]}/x"))[0]
        finally:
            srv.close()
        assert r.status == "FAIL"

    def test_untrusted_certificate_fails_as_tls(self, tls_server: tuple[str, Path]) -> None:
        """A self-signed certificate FAILs as a TLS problem with the ca_file fix."""
        url, _ = tls_server
        r = doctor.check_backend(self._cfg(url))[0]
        assert r.status == "FAIL" and "TLS" in r.detail and "ca_file" in (r.fix or "")

    def test_certificate_trusted_through_ca_file(self, tmp_path: Path, tls_server: tuple[str, Path]) -> None:
        """With tls.ca_file the same server is OK."""
        url, cert = tls_server
        r = doctor.check_backend(self._cfg(url, token_file(tmp_path), tls={"ca_file": str(cert)}))
        assert r[0].status == "OK"

    def test_plain_http_to_remote_warns(self) -> None:
        """Plain http to a non-loopback host adds a WARN about the token in clear."""
        cfg = self._cfg("http://192.0.2.1:9/x", timeout_s=0.2)
        assert "backend-tls" in [r.name for r in doctor.check_backend(cfg)]


class TestDoctorSpoolAndJournal:
    def test_spool_with_pending_and_dead_batches(self, tmp_path: Path) -> None:
        """A real spool: OK with the pending count; dead letters are a WARN."""
        cfg = parse_config({"state_dir": str(tmp_path / "state")})
        sp = Spool(cfg.state_dir, cfg.spool.max_bytes)
        sp.append([NewBatch(f"b{i}", 1, 1, {"command": 1}, b'[{"id":"x"}]') for i in range(3)])
        first = sp.pending(1)[0]
        sp.dead_letter(first.seq, "400 bad", 400)
        sp.close()
        os.chmod(tmp_path / "state", 0o700)
        results = doctor_spool.check_spool(cfg)
        assert results[0].status == "OK" and "2 batches pending" in results[0].detail
        assert by_name(results, "dead-letters").status == "WARN"

    def test_garbage_spool_file_fails(self, tmp_path: Path) -> None:
        """A spool file that is not SQLite FAILs with how to recover."""
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        (state / "spool.db").write_bytes(os.urandom(8192))
        r = doctor_spool.check_spool(parse_config({"state_dir": str(state)}))[0]
        assert r.status == "FAIL" and "move" in (r.fix or "")

    def test_open_state_dir_warns(self, tmp_path: Path) -> None:
        """A state dir readable by others is a WARN (spooled events are private)."""
        state = tmp_path / "state"
        state.mkdir(mode=0o755)
        state.chmod(0o755)
        results = doctor_spool.check_spool(parse_config({"state_dir": str(state)}))
        assert by_name(results, "state-dir").status == "WARN"

    def test_journal_directory_with_entries_ok(self, tmp_path: Path) -> None:
        """A journal directory holding a real journal file is readable: OK."""
        need_binary("systemd-journal-remote", "/lib/systemd/systemd-journal-remote")
        jdir = tmp_path / "journal"
        jdir.mkdir()
        write_journal_file(jdir / "t.journal", [{"MESSAGE": "hello", "SYSLOG_IDENTIFIER": "t"}])
        cfg = parse_config({"collectors": {"journald": {"directory": str(jdir)}}})
        assert doctor.check_journal(cfg)[0].status == "OK"

    def test_empty_journal_directory_warns(self, tmp_path: Path) -> None:
        """An empty journal directory is a WARN; a missing one a FAIL naming the option."""
        cfg = parse_config({"collectors": {"journald": {"directory": str(tmp_path)}}})
        assert doctor.check_journal(cfg)[0].status == "WARN"
        cfg = parse_config({"collectors": {"journald": {"directory": str(tmp_path / "no")}}})
        r = doctor.check_journal(cfg)[0]
        assert r.status == "FAIL" and "collectors.journald.directory" in (r.fix or "")


class TestProvenanceCheck:
    def test_files_only_warns_what_is_given_up(self) -> None:
        """Auth rows from files (no journal) are a WARN saying any local user can forge them; from
        the journal an OK."""
        r = doctor.check_provenance(parse_config({"collectors": {"journald": {"enabled": False}}}))[0]
        assert r.status == "WARN" and "any local user can forge" in r.detail and "journald" in (r.fix or "")
        r = doctor.check_provenance(parse_config({"collectors": {"auth": {"source": "file"}}}))[0]
        assert r.status == "WARN"
        assert doctor.check_provenance(parse_config({}))[0].status == "OK"
        off = {"collectors": {"auth": {"enabled": False}, "sftp": {"enabled": False}, "journald": {"enabled": False}}}
        assert doctor.check_provenance(parse_config(off))[0].status == "OK"


class TestDoctorCommand:
    def test_exit_status_and_report(self, tmp_path: Path, receiver: ReceiverProcess,
                                    capsys: pytest.CaptureFixture[str]) -> None:
        """A healthy setup exits 0; a bad token mode flips it to 1 with a fix line."""
        need_root()
        t = token_file(tmp_path, receiver.token)
        cfg = write_config(tmp_path, {"sink": {"url": receiver.ingest_url, "token_file": str(t)}})
        assert cli("doctor", "--config", str(cfg)) == 0
        out = capsys.readouterr().out
        assert "OK    backend" in out and "0 failed" in out
        t.chmod(0o644)
        assert cli("doctor", "--config", str(cfg)) == 1
        assert "fix: chmod 600" in capsys.readouterr().out

    def test_json_output(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints one object per check."""
        (tmp_path / "agent.yaml").write_text("bogus: 1\n")
        assert cli("doctor", "--json", "--config", str(tmp_path / "agent.yaml")) == 1
        results = json.loads(capsys.readouterr().out)
        assert results[0]["name"] == "config" and results[0]["status"] == "FAIL"

    def test_registered_in_the_cli(self, tmp_path: Path) -> None:
        """The installed command knows doctor and setup."""
        exe = Path(sys.executable).parent / "alpacon-agent"
        res = subprocess.run([str(exe), "doctor", "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "--config" in res.stdout
        res = subprocess.run([str(exe), "setup", "--check", "--config", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True)
        assert res.returncode == 1


class TestSetup:
    def _setup(self, tmp: Path, *extra: str, url: str = "https://ws.example.com/api/v1/agent/events",
               token: Path | None = None) -> int:
        token = token or token_file(tmp / "src" if (tmp / "src").is_dir() else tmp, "tok-123")
        return cli("setup", "--config", str(tmp / "agent.yaml"), "--url", url,
                   "--token-file", str(token), "--token-dest", str(tmp / "dest-token"), *extra)

    def test_shipped_config_keeps_comments(self, tmp_path: Path) -> None:
        """setup on the shipped agent.yaml changes only url and token_file, comments kept."""
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(DEFAULT_YAML.read_text())
        assert self._setup(tmp_path, "--no-start") == 0
        new = cfg.read_text()
        old_lines = DEFAULT_YAML.read_text().splitlines()
        new_lines = new.splitlines()
        assert len(old_lines) == len(new_lines)
        changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
        assert changed == [
            ("  url: http://127.0.0.1:8765/api/v1/agent/events",
             "  url: https://ws.example.com/api/v1/agent/events"),
            ("  #token_file:", f"  token_file: {tmp_path / 'dest-token'}"),
        ]
        tok = tmp_path / "dest-token"
        assert stat.S_IMODE(tok.stat().st_mode) == 0o600 and tok.read_text() == "tok-123\n"
        assert load_config(cfg).sink.token() == "tok-123"

    def test_rerun_and_server_name(self, tmp_path: Path) -> None:
        """A second run with another URL and a server name updates the same keys."""
        (tmp_path / "agent.yaml").write_text(DEFAULT_YAML.read_text())
        assert self._setup(tmp_path, "--no-start") == 0
        assert self._setup(tmp_path, "--no-start", "--server", "web-07",
                           url="https://other.example.com/api/v1/agent/events") == 0
        cfg = load_config(tmp_path / "agent.yaml")
        assert cfg.server == "web-07" and cfg.sink.url.startswith("https://other.")
        assert (tmp_path / "agent.yaml").read_text().count("token_file:") == 1

    @pytest.mark.parametrize(
        "text",
        ["", "# only a comment\n", "sink: {type: http, timeout_s: 5}\nbatch:\n  max_events: 10\n",
         "server: web-01\n"],
    )
    def test_other_config_shapes(self, tmp_path: Path, text: str) -> None:
        """Empty, comment-only, flow-style and sink-less files all end up configured."""
        (tmp_path / "agent.yaml").write_text(text)
        assert self._setup(tmp_path, "--no-start") == 0
        cfg = load_config(tmp_path / "agent.yaml")
        assert cfg.sink.url == "https://ws.example.com/api/v1/agent/events"
        if "max_events" in text:
            assert cfg.batch.max_events == 10 and cfg.sink.timeout_s == 5
        if text.startswith("#"):
            assert (tmp_path / "agent.yaml").read_text().startswith("# only a comment")

    @pytest.mark.parametrize(
        "content",
        [b"", b"   \n", b"two words", b"\xff\xfe\x00binary", b"x" * 20000, b"line1\nline2"],
    )
    def test_bad_token_refused_and_nothing_written(self, tmp_path: Path, content: bytes) -> None:
        """Empty, spaced, binary, oversize and multi-line tokens: exit 2, no file touched."""
        (tmp_path / "agent.yaml").write_text("server: a\n")
        bad = tmp_path / "bad-token"
        bad.write_bytes(content)
        assert self._setup(tmp_path, "--no-start", token=bad) == 2
        assert not (tmp_path / "dest-token").exists()
        assert (tmp_path / "agent.yaml").read_text() == "server: a\n"

    def test_token_source_not_a_file(self, tmp_path: Path) -> None:
        """A directory or a FIFO as the token file is refused without blocking."""
        (tmp_path / "agent.yaml").write_text("")
        assert self._setup(tmp_path, "--no-start", token=tmp_path) == 2
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        assert self._setup(tmp_path, "--no-start", token=fifo) == 2

    @pytest.mark.parametrize("url", ["ftp://x/y", "https://", "not a url", "http://h/a b"])
    def test_bad_url_refused(self, tmp_path: Path, url: str) -> None:
        """Non-http(s), host-less and spaced URLs are refused."""
        (tmp_path / "agent.yaml").write_text("")
        assert self._setup(tmp_path, "--no-start", url=url) == 2

    def test_broken_config_left_alone(self, tmp_path: Path) -> None:
        """A config that is not YAML, or whose sink is not a mapping, is not rewritten."""
        for text in ("sink: [unclosed\n", "sink: 5\n", "- 1\n"):
            (tmp_path / "agent.yaml").write_text(text)
            assert self._setup(tmp_path, "--no-start") == 2
            assert (tmp_path / "agent.yaml").read_text() == text

    def test_check(self, tmp_path: Path) -> None:
        """--check: 1 before setup, 0 after."""
        (tmp_path / "agent.yaml").write_text(DEFAULT_YAML.read_text())
        args = ("setup", "--check", "-q", "--config", str(tmp_path / "agent.yaml"))
        assert cli(*args) == 1
        assert self._setup(tmp_path, "--no-start") == 0
        assert cli(*args) == 0

    def test_starts_service_through_systemctl(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With systemd running, setup enables and restarts the unit; a failure exits 1."""
        bindir = tmp_path / "bin"
        bindir.mkdir()
        calls = tmp_path / "calls"
        fake = bindir / "systemctl"
        fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" != restart ] || exit "${{FAIL:-0}}"\n')
        fake.chmod(0o755)
        run_dir = tmp_path / "run-systemd"
        run_dir.mkdir()
        monkeypatch.setattr(unit, "SYSTEMD_RUN_DIR", run_dir)
        monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
        (tmp_path / "agent.yaml").write_text("")
        assert self._setup(tmp_path) == 0
        assert calls.read_text().splitlines() == [
            "enable alpacon-agent.service", "restart alpacon-agent.service"]
        monkeypatch.setenv("FAIL", "1")
        assert self._setup(tmp_path) == 1
