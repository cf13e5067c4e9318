"""The packages: built from the repo, linted, installed into a clean Debian 12 root, upgraded
with a non-empty spool, removed and purged.

Slow (a debootstrapped root, two package builds): marked ``packaging`` so that CI runs it
as its own step (``pytest -m packaging``). The first run debootstraps from the Debian mirror
and caches the root under /var/cache/alpacon-agent-test; later runs unpack that tarball.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __version__
from agent.wire import unpack
from tests.harness import ReceiverProcess
from tests.support import free_port, need_binary, need_root, wait_until

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "packaging"
APT_CACHE = Path("/var/cache/alpacon-agent-test/apt-archives")
VERSION_N = __version__
VERSION_N1 = f"{__version__}.1"
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}


def build(fmt: str, version: str, out: Path) -> Path:
    """Run packaging/build.sh and return the package it made."""
    env = dict(os.environ, VERSION=version, RELEASE="1")
    res = subprocess.run([str(PKG / "build.sh"), fmt, str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.is_file(), res.stdout
    return path


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Version N and version N+1 of the .deb, built from this checkout."""
    need_binary("dpkg-deb")
    out = tmp_path_factory.mktemp("debs")
    return {VERSION_N: build("deb", VERSION_N, out), VERSION_N1: build("deb", VERSION_N1, out)}


@pytest.fixture(scope="module")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_binary("rpmbuild")
    return build("rpm", VERSION_N, tmp_path_factory.mktemp("rpms"))


class Chroot:
    """A clean Debian 12 root with /proc mounted and a shared apt archive cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounts: list[Path] = []

    def setup(self) -> Chroot:
        res = subprocess.run(
            [str(PKG / "debian12-root.sh"), str(self.root)], capture_output=True, text=True, timeout=1800
        )
        assert res.returncode == 0, res.stderr[-3000:]
        self._mount(["-t", "proc", "proc"], self.root / "proc")
        APT_CACHE.mkdir(parents=True, exist_ok=True)
        (APT_CACHE / "partial").mkdir(exist_ok=True)
        self._mount(["--bind", str(APT_CACHE)], self.root / "var/cache/apt/archives")
        return self

    def _mount(self, args: list[str], target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True)
        self.mounts.append(target)

    def teardown(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["chroot", str(self.root), *cmd],
            capture_output=True,
            text=True,
            env=CHROOT_ENV,
            timeout=timeout,
            input=input,
        )
        if check:
            assert res.returncode == 0, f"{cmd}: rc {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    def popen(self, *cmd: str, log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["chroot", str(self.root), *cmd], env=CHROOT_ENV, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def copy_in(self, src: Path, dest: str) -> str:
        shutil.copy2(src, self.path(dest))
        return dest


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    need_root()
    need_binary("debootstrap")
    need_binary("chroot")
    c = Chroot(tmp_path_factory.mktemp("d12") / "root").setup()
    try:
        yield c
    finally:
        c.teardown()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """The reference receiver on a fixed loopback port (the chroot shares the network)."""
    r = ReceiverProcess(tmp_path_factory.mktemp("receiver"), port=free_port())
    r.start()
    try:
        yield r
    finally:
        r.stop()


def spool_rows(c: Chroot) -> dict[str, tuple[str, bytes]]:
    """batch_id -> (codec, body as stored) of every pending batch in the installed agent's spool."""
    db = sqlite3.connect(f"file:{c.path('/var/lib/alpacon-agent/spool.db')}?mode=ro", uri=True)
    try:
        return {
            bid: (codec, bytes(body)) for bid, codec, body in db.execute("SELECT batch_id, codec, body FROM batches")
        }
    finally:
        db.close()


def event_ids(rows: dict[str, tuple[str, bytes]]) -> set[str]:
    ids: set[str] = set()
    for codec, body in rows.values():
        events = json.loads(unpack(codec, body))
        ids.update(e["id"] for e in (events if isinstance(events, list) else events["events"]))
    return ids


class TestDebBuild:
    def test_lintian_reports_no_errors(self, debs: dict[str, Path]) -> None:
        """lintian finds no error in the .deb (overrides carry their reasons)."""
        lintian = need_binary("lintian")
        res = subprocess.run(
            [lintian, "--fail-on", "error", str(debs[VERSION_N])], capture_output=True, text=True, timeout=600
        )
        errors = [line for line in res.stdout.splitlines() if line.startswith("E:")]
        assert res.returncode == 0 and not errors, res.stdout + res.stderr

    def test_contents_and_metadata(self, debs: dict[str, Path]) -> None:
        """The command, unit, conffile and venv are there; Depends names the Python it needs."""
        deb = str(debs[VERSION_N])
        listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
        for path in (
            "./usr/bin/alpacon-agent -> /opt/alpacon-agent/bin/alpacon-agent",
            "./lib/systemd/system/alpacon-agent.service",
            "./etc/alpacon-agent/agent.yaml",
            "./opt/alpacon-agent/bin/python3.11 -> /usr/bin/python3.11",
            "./usr/share/doc/alpacon-agent/copyright",
        ):
            assert path in listing, path
        # the compiled parts are built into the package
        for part in ("collectors/journald/_rows", "collectors/syslog/_lines", "agent/pipeline/_scan"):
            assert re.search(r"site-packages/" + part + r"\.cpython-3\d+-[\w-]+\.so", listing), part
        assert "__pycache__" not in listing and ".pyc" not in listing
        fields = subprocess.run(
            ["dpkg-deb", "-f", deb, "Version", "Depends"], capture_output=True, text=True, check=True
        ).stdout
        assert f"Version: {VERSION_N}-1" in fields
        assert re.search(r"python3\.1[1-9]\b", fields) and "libsystemd0" in fields
        conffiles = subprocess.run(
            ["dpkg-deb", "-I", deb, "conffiles"], capture_output=True, text=True, check=True
        ).stdout
        assert conffiles.split() == ["/etc/alpacon-agent/agent.yaml"]


class TestRpmBuild:
    def test_rpm_lists_expected_files(self, rpm: Path) -> None:
        """rpm -qlp shows the command, venv, unit, config (noreplace) and state dir."""
        files = set(
            subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True, check=True).stdout.split()
        )
        for path in (
            "/usr/bin/alpacon-agent",
            "/opt/alpacon-agent/bin/alpacon-agent",
            "/opt/alpacon-agent/bin/python3",
            "/usr/lib/systemd/system/alpacon-agent.service",
            "/etc/alpacon-agent/agent.yaml",
            "/var/lib/alpacon-agent",
        ):
            assert path in files, path
        assert any(p.endswith("/site-packages/agent/cli/doctor.py") for p in files)
        configs = subprocess.run(["rpm", "-qpc", str(rpm)], capture_output=True, text=True, check=True).stdout.split()
        assert configs == ["/etc/alpacon-agent/agent.yaml"]
        dump = subprocess.run(["rpm", "-qp", "--dump", str(rpm)], capture_output=True, text=True, check=True).stdout
        state = next(line for line in dump.splitlines() if line.startswith("/var/lib/alpacon-agent "))
        assert " 040700 " in state, state

    def test_rpmlint_reports_no_errors(self, rpm: Path) -> None:
        """rpmlint (with the filters in packaging/rpm, each explained) reports 0 errors."""
        rpmlint = need_binary("rpmlint")
        res = subprocess.run(
            [rpmlint, "-r", str(PKG / "rpm/alpacon-agent.rpmlintrc"), str(rpm)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert re.search(r"\b0 errors\b", res.stdout), res.stdout[-4000:]

    def test_scripts_tolerate_missing_systemd(self, rpm: Path) -> None:
        """Every scriptlet guards systemctl calls so installs into images and chroots work."""
        scripts = subprocess.run(
            ["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True, check=True
        ).stdout
        for line in scripts.splitlines():
            if "systemctl " in line and "--no-reload" not in line:
                assert "|| :" in line or "2>/dev/null" in line or "is-active" in line, line


class TestDebianInstall:
    """One clean Debian 12 root, in order: install, run, upgrade, remove, purge."""

    def test_install_into_clean_root(self, chroot: Chroot, debs: dict[str, Path]) -> None:
        """apt installs the .deb with its dependencies; the unit is enabled, not started."""
        deb = chroot.copy_in(debs[VERSION_N], "/tmp/agent-n.deb")
        res = chroot.run("apt-get", "install", "-y", "-q", "--no-install-recommends", deb, "systemd", timeout=1200)
        assert "not connected" in res.stdout
        assert chroot.path("/etc/systemd/system/multi-user.target.wants/alpacon-agent.service").is_symlink()
        state = chroot.path("/var/lib/alpacon-agent").stat()
        assert oct(state.st_mode & 0o777) == "0o700"
        assert list(chroot.path("/opt/alpacon-agent/lib").rglob("__pycache__")), "postinst compiles"

    def test_version_and_check_config(self, chroot: Chroot) -> None:
        """--version and check-config work from the installed package; a bad file exits 2."""
        out = chroot.run("alpacon-agent", "--version").stdout.strip()
        assert out == f"alpacon-agent {VERSION_N}"
        chroot.run("alpacon-agent", "check-config", "/etc/alpacon-agent/agent.yaml")
        chroot.path("/tmp/bad.yaml").write_text("collectors:\n  journald:\n    min_level: loud\n")
        bad = chroot.run("alpacon-agent", "check-config", "/tmp/bad.yaml", check=False)
        assert bad.returncode == 2 and "collectors.journald.min_level" in bad.stdout + bad.stderr
        # the compiled parts load (the journal reader against the installed libsystemd)
        ok = chroot.run("/opt/alpacon-agent/bin/python", "-c",
                        "from collectors.journald import rows; from collectors.syslog import compiled;"
                        " from agent.pipeline import redact; assert rows.events() is not None;"
                        " assert compiled.compiled_block_reader() is not None; assert redact._scan is not None;"
                        " print('compiled')")
        assert ok.stdout.strip() == "compiled"

    def test_installed_unit_verifies_and_scores_ok(self, chroot: Chroot) -> None:
        """systemd-analyze verify accepts the installed unit; security rates it OK or better."""
        analyze = need_binary("systemd-analyze")
        res = subprocess.run(
            [analyze, "verify", f"--root={chroot.root}", "alpacon-agent.service"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
        assert res.returncode == 0 and not res.stderr.strip(), res.stderr
        sec = subprocess.run(
            [analyze, "security", "--offline=true", f"--root={chroot.root}", "alpacon-agent.service"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", sec.stdout)
        assert m and float(m.group(1)) < 5.0, sec.stdout[-2000:] + sec.stderr

    def test_setup_then_doctor(self, chroot: Chroot, receiver: ReceiverProcess) -> None:
        """setup stores the token 0600 and the URL; doctor then finds no failure."""
        chroot.path("/root/token.txt").write_text(receiver.token + "\n")
        before = chroot.run("alpacon-agent", "setup", "--check", check=False)
        assert before.returncode == 1
        res = chroot.run(
            "alpacon-agent",
            "setup",
            "--url",
            receiver.ingest_url,
            "--token-file",
            "/root/token.txt",
            "--server",
            "d12-test",
        )
        assert "systemd is not running" in res.stdout
        token = chroot.path("/etc/alpacon-agent/token")
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        assert token.read_text().strip() == receiver.token
        conf = chroot.path("/etc/alpacon-agent/agent.yaml").read_text()
        assert receiver.ingest_url in conf and "# Where batches go." in conf, "comments kept"
        chroot.run("alpacon-agent", "setup", "--check")
        doc = chroot.run("alpacon-agent", "doctor", check=False)
        assert doc.returncode == 0, doc.stdout + doc.stderr
        assert re.search(r"^OK\s+backend\s", doc.stdout, re.M), doc.stdout
        assert re.search(r"^OK\s+token\s", doc.stdout, re.M), doc.stdout

    def test_installed_agent_ships_then_spools_while_backend_is_away(
        self, chroot: Chroot, receiver: ReceiverProcess, tmp_path: Path
    ) -> None:
        """The packaged agent runs: an event reaches the receiver; with it gone, events spool."""
        log = tmp_path / "agent.log"
        proc = chroot.popen("alpacon-agent", "run", "--config", "/etc/alpacon-agent/agent.yaml", log=log)
        try:
            sock = chroot.path("/run/alpacon-agent/hook.sock")
            wait_until(lambda: sock.exists() or proc.poll() is not None, 60, what="hook socket")
            assert proc.poll() is None, log.read_text()[-3000:]
            doc = chroot.run("alpacon-agent", "doctor", check=False)
            assert re.search(r"^OK\s+hook\s", doc.stdout, re.M), doc.stdout
            data = {"user": "alice", "action": "login", "result": 200, "ip": "10.0.0.1"}
            chroot.run("alpacon-agent", "emit", "user_activity", "--json", json.dumps(data), "--id", "pkg-test-first")
            wait_until(lambda: "pkg-test-first" in receiver.ids(), 60, what="first event shipped")
            receiver.stop()
            for i in range(30):
                chroot.run(
                    "alpacon-agent",
                    "emit",
                    "user_activity",
                    "--json",
                    json.dumps(data),
                    "--id",
                    f"pkg-test-spooled-{i}",
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        rows = spool_rows(chroot)
        assert {f"pkg-test-spooled-{i}" for i in range(30)} <= event_ids(rows)

    def test_upgrade_keeps_every_pending_batch(
        self, chroot: Chroot, debs: dict[str, Path], receiver: ReceiverProcess
    ) -> None:
        """dpkg -i of version N+1 keeps the spool byte for byte, the config and the token."""
        before = spool_rows(chroot)
        assert before, "the previous test left pending batches"
        conf = chroot.path("/etc/alpacon-agent/agent.yaml").read_text()
        deb = chroot.copy_in(debs[VERSION_N1], "/tmp/agent-n1.deb")
        chroot.run("dpkg", "-i", deb)
        assert chroot.run("alpacon-agent", "--version").stdout.strip() == f"alpacon-agent {VERSION_N1}"
        assert spool_rows(chroot) == before
        assert chroot.path("/etc/alpacon-agent/agent.yaml").read_text() == conf
        assert chroot.path("/etc/alpacon-agent/token").exists()
        receiver.start()
        res = chroot.run(
            "alpacon-agent", "run", "--once", "--config", "/etc/alpacon-agent/agent.yaml", check=False, timeout=300
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert event_ids(before) <= set(receiver.ids())
        assert spool_rows(chroot) == {}

    def test_remove_keeps_config_and_state(self, chroot: Chroot) -> None:
        """dpkg -r removes the program and keeps config, token and state."""
        chroot.run("dpkg", "-r", "alpacon-agent")
        assert not chroot.path("/opt/alpacon-agent").exists(), "no byte-code left behind"
        assert not chroot.path("/usr/bin/alpacon-agent").is_symlink()
        assert not chroot.path("/lib/systemd/system/alpacon-agent.service").exists()
        for kept in ("/etc/alpacon-agent/agent.yaml", "/etc/alpacon-agent/token", "/var/lib/alpacon-agent/spool.db"):
            assert chroot.path(kept).exists(), kept
        status = chroot.run("dpkg-query", "-W", "-f=${Status}", "alpacon-agent").stdout
        assert status == "deinstall ok config-files"

    def test_purge_deletes_config_and_state(self, chroot: Chroot) -> None:
        """dpkg -P deletes config, token, state and the unit's enablement."""
        chroot.run("dpkg", "-P", "alpacon-agent")
        for gone in (
            "/etc/alpacon-agent",
            "/var/lib/alpacon-agent",
            "/etc/systemd/system/multi-user.target.wants/alpacon-agent.service",
        ):
            assert not chroot.path(gone).exists() and not chroot.path(gone).is_symlink(), gone
        res = chroot.run("dpkg-query", "-W", "alpacon-agent", check=False)
        assert res.returncode != 0

    def test_scripts_drive_a_running_systemd(
        self, chroot: Chroot, debs: dict[str, Path], receiver: ReceiverProcess
    ) -> None:
        """With systemd "running" (a logging systemctl): install enables but does not start an
        unconfigured agent; an upgrade of a configured one stops it, then starts it; remove stops it."""
        calls = chroot.path("/var/log/systemctl.calls")
        stub = chroot.path("/usr/local/bin/systemctl")
        stub.write_text(
            "#!/bin/sh\n"
            'echo "$*" >> /var/log/systemctl.calls\n'
            'case "$*" in *--version*) echo "systemd 252 (252)";; *is-enabled*) echo enabled;; esac\n'
        )
        stub.chmod(0o755)
        chroot.path("/run/systemd/system").mkdir(parents=True)

        def actions() -> list[str]:
            text = calls.read_text() if calls.exists() else ""
            calls.write_text("")
            return [
                line.split()[-2]
                for line in text.splitlines()
                if line.endswith("alpacon-agent.service") and " is-" not in line
            ]

        try:
            chroot.run("dpkg", "-i", chroot.copy_in(debs[VERSION_N], "/tmp/agent-n.deb"))
            assert "start" not in actions(), "an unconfigured agent must not be started"
            chroot.path("/root/token.txt").write_text(receiver.token + "\n")
            chroot.run(
                "alpacon-agent", "setup", "--no-start", "--url", receiver.ingest_url, "--token-file", "/root/token.txt"
            )
            chroot.run("dpkg", "-i", chroot.copy_in(debs[VERSION_N1], "/tmp/agent-n1.deb"))
            assert actions() == ["stop", "start"]
            chroot.run("dpkg", "-r", "alpacon-agent")
            assert actions() == ["stop"]
        finally:
            stub.unlink()
            chroot.path("/run/systemd/system").rmdir()
            chroot.run("dpkg", "-P", "alpacon-agent", check=False)


def test_packaging_tools_present() -> None:
    """The tools the packaging step needs are installed (CI installs them) and run."""
    for tool in ("dpkg-deb", "rpmbuild", "lintian", "rpmlint", "debootstrap"):
        path = need_binary(tool)
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (tool, res.stderr)
        assert re.search(r"\d+\.\d+", res.stdout + res.stderr), (tool, res.stdout, res.stderr)
