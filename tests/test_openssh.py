"""End to end with a real OpenSSH server, sudo and su: their log lines go to a journald the test
started, the agent reads that journal, and the receiver ends up with the right user_activity
and webftp_transfer rows, each once."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.harness import AgentProcess, ReceiverProcess
from tests.parts import JOURNALD, LiveJournald
from tests.support import free_port, need, need_binary, need_root, wait_until

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/hostkey
PidFile {root}/sshd.pid
UsePAM yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
LogLevel INFO
SyslogFacility AUTH
AllowUsers {users}
Subsystem sftp {sftp_server} -l INFO
"""


class OsUser:
    """An OS user created for the test (removed afterwards)."""

    def __init__(self, name: str, password: str) -> None:
        self.name = name
        self.password = password
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        self.home = Path(f"/home/{name}")
        self.uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)

    def remove(self) -> None:
        subprocess.run(["userdel", "-r", self.name], capture_output=True)


class SshLab:
    """A journald in its own mount namespace whose /dev/log feeds it, an sshd on 127.0.0.1
    logging there, and test users: ``ssh_user`` (password and key), ``actor`` (sudo/su),
    ``target`` (su target)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        tag = secrets.token_hex(3)
        self.users: list[OsUser] = []
        self.journald = LiveJournald(root / "jd")
        self.sshd: subprocess.Popen[bytes] | None = None
        self.sudoers = Path(f"/etc/sudoers.d/alpacon-test-{tag}")
        self.tag = tag

    def start(self) -> SshLab:
        self.journald.start()
        dev = self.root / "jd" / "dev"
        dev.mkdir()
        # inside the namespace, /dev gets a log socket that leads to this journald
        script = (
            f"set -e; for n in null zero random urandom tty full ptmx; do touch {dev}/$n; "
            f"mount --bind /dev/$n {dev}/$n; done; mkdir -p {dev}/pts {dev}/shm; "
            f"mount --bind /dev/pts {dev}/pts; ln -s /run/systemd/journal/dev-log {dev}/log; "
            f"mount --rbind {dev} /dev; mkdir -p /run/sshd; chmod 755 /run/sshd"
        )
        self.journald.run(["sh", "-c", script])
        self.ssh_user = self._user(f"alps{self.tag}", "Ssh-" + secrets.token_hex(6))
        self.actor = self._user(f"alpa{self.tag}", "Act-" + secrets.token_hex(6))
        self.target = self._user(f"alpt{self.tag}", "Tgt-" + secrets.token_hex(6))
        self.sudoers.write_text(f"{self.actor.name} ALL=(root) /usr/bin/id\n")
        self.sudoers.chmod(0o440)
        for key in ("hostkey", "userkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / key)], check=True)
        ssh_dir = self.ssh_user.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text((self.root / "userkey.pub").read_text())
        subprocess.run(["chown", "-R", f"{self.ssh_user.name}:", str(ssh_dir)], check=True)
        conf = self.root / "sshd_config"
        conf.write_text(
            SSHD_CONFIG.format(
                port=self.port, root=self.root, sftp_server=SFTP_SERVER, users=" ".join(u.name for u in self.users)
            )
        )
        self.sshd = self.journald.popen([SSHD, "-D", "-f", str(conf)], stderr=open(self.root / "sshd.err", "ab"))
        wait_until(self._listening, 15, what="sshd listening")
        return self

    def _user(self, name: str, password: str) -> OsUser:
        u = OsUser(name, password)
        self.users.append(u)
        return u

    def _listening(self) -> bool:
        assert self.sshd is not None
        if self.sshd.poll() is not None:
            raise RuntimeError(f"sshd exited: {(self.root / 'sshd.err').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(10)
        self.sudoers.unlink(missing_ok=True)
        for u in self.users:
            u.remove()
        self.journald.stop()

    # -- clients ---------------------------------------------------------------------------
    def ssh_password(self, user: str, password: str) -> int:
        return subprocess.run(
            [
                "sshpass",
                "-p",
                password,
                "ssh",
                *SSH_OPTS,
                "-p",
                str(self.port),
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
                f"{user}@127.0.0.1",
                "true",
            ],
            capture_output=True,
            timeout=60,
        ).returncode

    def key_opts(self) -> list[str]:
        return [*SSH_OPTS, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-i", str(self.root / "userkey")]

    def ssh_key(self, user: str) -> int:
        return subprocess.run(
            ["ssh", *self.key_opts(), "-p", str(self.port), f"{user}@127.0.0.1", "true"],
            capture_output=True,
            timeout=60,
        ).returncode

    def sftp(self, user: str, batch: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["sftp", *self.key_opts(), "-P", str(self.port), "-b", "-", f"{user}@127.0.0.1"],
            input=batch.encode(),
            capture_output=True,
            timeout=120,
            check=check,
            **kw,
        )

    def in_ns_as(self, user: OsUser, args: list[str]) -> list[str]:
        """``args`` run as ``user`` (no PAM session of its own) inside the journald namespace."""
        return [
            "nsenter",
            "-t",
            str(self.journald.pid),
            "-m",
            "setpriv",
            f"--reuid={user.uid}",
            f"--regid={user.uid}",
            "--init-groups",
            "--reset-env",
            *args,
        ]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    need_root()
    need(os.access(JOURNALD, os.X_OK), "systemd-journald")
    need(os.access(SSHD, os.X_OK), "OpenSSH server (openssh-server)")
    need(os.access(SFTP_SERVER, os.X_OK), "sftp-server (openssh-sftp-server)")
    for b in ("sshpass", "ssh", "sftp", "scp", "sudo", "su", "setpriv", "useradd", "nsenter", "unshare"):
        need_binary(b)
    lab = SshLab(tmp_path_factory.mktemp("sshlab"))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def start_agent(agent_factory: Any, receiver: ReceiverProcess, lab: SshLab) -> AgentProcess:
    a = agent_factory(
        receiver,
        collectors={
            "journald": {"enabled": True, "directory": str(lab.journald.journal_dir), "start_at": "beginning"},
            "auth": {"enabled": True},
            "sftp": {"enabled": True},
        },
    )
    a.start()
    return a


def settle(lab: SshLab, receiver: ReceiverProcess) -> None:
    """Until a marker logged after everything has reached the receiver: all earlier lines are in."""
    marker = f"alpacon-test-marker-{secrets.token_hex(4)}"
    lab.journald.logger(marker, tag="marker")
    wait_until(
        lambda: any(r["message"] == marker for r in receiver.view("system-logs", program="marker")),
        60,
        what="marker line at the receiver",
    )


def activity(receiver: ReceiverProcess, users: set[str]) -> Counter[tuple[Any, ...]]:
    return Counter(
        (r["user"], r["ip"], r["action"], r["result"]) for r in receiver.view("user-activity") if r["user"] in users
    )


class TestOpenSSHEndToEnd:
    def test_logins_and_transfers(
        self, lab: SshLab, agent_factory: Any, receiver: ReceiverProcess, tmp_path: Path
    ) -> None:
        """Logins (password, key, wrong password, invalid user), sftp transfers of several sizes,
        one aborted midway, and scp both ways give the right rows, each once."""
        agent = start_agent(agent_factory, receiver, lab)
        u = lab.ssh_user
        bogus = f"nobody{lab.tag}"
        assert lab.ssh_password(u.name, u.password) == 0
        assert lab.ssh_key(u.name) == 0
        assert lab.ssh_password(u.name, "wrong-" + u.password) != 0
        assert lab.ssh_password(bogus, "whatever") != 0

        sizes = {"s0": 0, "s1": 1, "s100k": 100_000, "s3m": 3_000_001}
        for name, n in sizes.items():
            (tmp_path / name).write_bytes(os.urandom(n))
        batch = "".join(f"put {tmp_path / n} up_{n}\n" for n in sizes)
        batch += "".join(f"get up_{n} {tmp_path / ('back_' + n)}\n" for n in sizes)
        lab.sftp(u.name, batch)
        for n in sizes:
            assert (tmp_path / f"back_{n}").read_bytes() == (tmp_path / n).read_bytes()

        # scp (SFTP protocol since OpenSSH 9) both ways
        (tmp_path / "scpsrc").write_bytes(os.urandom(54_321))
        scp = ["scp", *lab.key_opts(), "-P", str(lab.port)]
        subprocess.run(
            [*scp, str(tmp_path / "scpsrc"), f"{u.name}@127.0.0.1:scp_up"], check=True, timeout=60, capture_output=True
        )
        subprocess.run(
            [*scp, f"{u.name}@127.0.0.1:scp_up", str(tmp_path / "scp_back")],
            check=True,
            timeout=60,
            capture_output=True,
        )
        assert (tmp_path / "scp_back").read_bytes() == (tmp_path / "scpsrc").read_bytes()

        # an upload cut midway: a slow sftp killed while the file grows on the server
        (tmp_path / "big").write_bytes(os.urandom(30_000_000))
        remote = u.home / "aborted"
        p = subprocess.Popen(
            ["sftp", *lab.key_opts(), "-l", "2000", "-P", str(lab.port), "-b", "-", f"{u.name}@127.0.0.1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert p.stdin is not None
        p.stdin.write(f"put {tmp_path / 'big'} aborted\n".encode())
        p.stdin.close()
        wait_until(lambda: remote.exists() and remote.stat().st_size >= 300_000, 60, what="partial upload")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

        home = str(u.home)
        expected_ftp = Counter(
            [("upload", f"{home}/up_{n}", f"up_{n}", size, "success") for n, size in sizes.items()]
            + [("download", f"{home}/up_{n}", f"up_{n}", size, "success") for n, size in sizes.items()]
            + [
                ("upload", f"{home}/scp_up", "scp_up", 54_321, "success"),
                ("download", f"{home}/scp_up", "scp_up", 54_321, "success"),
            ]
        )

        def ftp_rows() -> list[dict[str, Any]]:
            return [r for r in receiver.view("webftp-transfers") if r["username"] == u.name]

        # the aborted upload: failed, with exactly the bytes that reached the server
        try:
            wait_until(lambda: any(r["status"] == "failed" for r in ftp_rows()), 60, what="the aborted upload row")
        except AssertionError:
            logs = [
                (r["program"], r["pid"], r["message"])
                for r in receiver.view("system-logs")
                if r["program"] in ("sftp-server", "sshd")
            ]
            raise AssertionError(
                f"no aborted upload row; transfers: {ftp_rows()}; sftp/sshd lines: {logs[-30:]}"
            ) from None
        partial = remote.stat().st_size
        expected_ftp[("upload", f"{home}/aborted", "aborted", partial, "failed")] += 1
        n_sessions = 1 + 2 + 1  # one sftp batch, two scp, the aborted sftp
        expected_ua = Counter(
            {
                (u.name, "127.0.0.1", "login", 200): 2 + n_sessions,
                (u.name, "127.0.0.1", "logout", 200): 2 + n_sessions,
                (u.name, "127.0.0.1", "login_failed", 401): 1,
                (bogus, "127.0.0.1", "invalid_user", 401): 1,
                (bogus, "127.0.0.1", "login_failed", 401): 1,
            }
        )
        wait_until(
            lambda: activity(receiver, {u.name, bogus}) == expected_ua,
            60,
            what=f"user activity {expected_ua} (have {activity(receiver, {u.name, bogus})})",
        )
        settle(lab, receiver)
        assert activity(receiver, {u.name, bogus}) == expected_ua
        rows = ftp_rows()
        got = Counter((r["type"], r["path"], r["object_name"], r["size"], r["status"]) for r in rows)
        assert got == expected_ftp
        assert all(r["remote_ip"] == "127.0.0.1" and r["server"] == "test-server" for r in rows)
        ids = [r["id"] for r in receiver.view("user-activity")] + [r["id"] for r in rows]
        assert len(ids) == len(set(ids))
        # who vouched: the root sshd for logins and logouts, the user's own sftp-server for transfers
        sshd = os.path.realpath(SSHD)
        for r in receiver.view("user-activity"):
            if r["user"] in (u.name, bogus):
                prov = r["provenance"]
                assert (prov["source"], prov["uid"], prov.get("exe", sshd)) == ("journal", 0, sshd), r
                assert prov["pid"] == r["details"]["pid"]
        for r in rows:
            prov = r["provenance"]
            assert (prov["source"], prov["uid"], prov.get("comm")) == ("journal", u.uid, "sftp-server"), r
            assert prov.get("exe", SFTP_SERVER) == SFTP_SERVER
        agent.stop()

    def test_sudo_and_su(self, lab: SshLab, agent_factory: Any, receiver: ReceiverProcess) -> None:
        """sudo with a right and a wrong password and a forbidden command, and su that succeeds
        and fails, give the right user_activity rows."""
        agent = start_agent(agent_factory, receiver, lab)
        a, t = lab.actor, lab.target

        def sudo(pw: str, *cmd: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                lab.in_ns_as(a, ["sudo", "-k", "-S", "-p", "", *cmd]),
                input=f"{pw}\n".encode(),
                capture_output=True,
                timeout=60,
            )

        ok = sudo(a.password, "/usr/bin/id", "-u")
        assert ok.returncode == 0 and ok.stdout.strip() == b"0", ok.stderr
        assert sudo("wrong-" + a.password, "/usr/bin/id").returncode != 0
        assert sudo(a.password, "/usr/bin/cat", "/etc/shadow").returncode != 0

        def su(pw: str) -> int:
            cmd = lab.in_ns_as(a, ["su", "-c", "true", t.name])
            child = pexpect.spawn(cmd[0], cmd[1:], timeout=30)
            child.expect("Password:")
            child.sendline(pw)
            child.expect(pexpect.EOF)
            child.close()
            return child.exitstatus

        assert su(t.password) == 0
        assert su("wrong-" + t.password) != 0

        def rows() -> list[tuple[Any, ...]]:
            return sorted(
                (r["action"], r["result"], r["details"].get("target_user"), r["details"].get("command"))
                for r in receiver.view("user-activity")
                if r["user"] == a.name
            )

        expected = sorted(
            [
                ("sudo", 200, "root", "/usr/bin/id -u"),
                ("sudo", 401, "root", "/usr/bin/id"),
                ("sudo", 403, "root", "/usr/bin/cat /etc/shadow"),
                ("su", 200, t.name, None),
                ("su", 401, t.name, None),
            ]
        )
        wait_until(lambda: rows() == expected, 60, what=f"sudo/su rows {expected} (have {rows()})")
        settle(lab, receiver)
        assert rows() == expected
        # who vouched: the setuid sudo and su, running as the invoking user (an exe journald could
        # not read any more, when the process had exited, leaves its name)
        for r in receiver.view("user-activity"):
            if r["user"] == a.name:
                prov, program = r["provenance"], r["details"]["program"]
                assert (prov["source"], prov["uid"], prov["comm"]) == ("journal", a.uid, program), r
                assert prov.get("exe") in (None, os.path.realpath(need_binary(program))), r
        agent.stop()
