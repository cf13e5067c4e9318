"""The shipped systemd unit: systemd itself accepts it and rates its sandbox "OK" or better."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import need_binary

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "alpacon-agent.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, repeated keys kept in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def make_root(tmp: Path, unit_text: str) -> Path:
    """A scratch root holding the system's units, ours, and the programs it names."""
    root = tmp / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    stub = root / "usr/bin/alpacon-agent"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "usr/lib/systemd/system/alpacon-agent.service").write_text(unit_text)
    return root


def verify(tmp: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    analyze = need_binary("systemd-analyze")
    root = make_root(tmp, unit_text)
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "alpacon-agent.service"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
    )


def exposure(tmp: Path, unit_text: str) -> tuple[float, str]:
    analyze = need_binary("systemd-analyze")
    path = tmp / "alpacon-agent.service"
    path.write_text(unit_text)
    res = subprocess.run(
        [analyze, "security", "--offline=true", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1)), m.group(2)


class TestSystemdUnit:
    def test_verify_accepts_unit_without_warnings(self, tmp_path: Path) -> None:
        """systemd-analyze verify accepts the unit and prints no warning at all."""
        res = verify(tmp_path, UNIT.read_text())
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip() == "", res.stderr

    def test_verify_reports_a_broken_option(self, tmp_path: Path) -> None:
        """The verify check is not vacuous: a garbage value is reported."""
        broken = UNIT.read_text().replace("ProtectClock=yes", "ProtectClock=loud")
        line = broken.splitlines().index("ProtectClock=loud") + 1
        res = verify(tmp_path, broken)
        # systemd names the file and line of the bad value, not the option
        assert f"alpacon-agent.service:{line}: Failed to parse boolean value, ignoring: loud" in res.stderr, res.stderr

    def test_security_scores_ok_or_better(self, tmp_path: Path) -> None:
        """systemd-analyze security rates the sandbox in the OK band or better (< 5.0)."""
        score, band = exposure(tmp_path, UNIT.read_text())
        assert band in ("PERFECT", "SAFE", "OK"), (score, band)
        assert score < 5.0

    def test_security_score_reacts_to_weakening(self, tmp_path: Path) -> None:
        """Dropping the sandbox raises the exposure, so the score measures this file."""
        keep = ("[", "Type", "Exec", "Description", "Notify", "Watchdog", "Restart", "Wanted")
        bare = "\n".join(
            line for line in UNIT.read_text().splitlines() if line.startswith(keep)
        )
        hardened, _ = exposure(tmp_path, UNIT.read_text())
        weak, band = exposure(tmp_path, bare)
        assert weak > hardened + 3, (weak, hardened)
        assert band in ("EXPOSED", "UNSAFE", "DANGEROUS")

    def test_service_contract(self) -> None:
        """Type=notify with a watchdog, the agent's command, and its three directories."""
        d = _directives(UNIT.read_text())
        assert d["Type"] == ["notify"]
        assert d["NotifyAccess"] == ["main"]
        assert d["WatchdogSec"] and d["WatchdogSec"][0].endswith("s")
        assert d["Restart"] == ["on-failure"]
        assert d["ExecStart"] == ["/usr/bin/alpacon-agent run --config /etc/alpacon-agent/agent.yaml"]
        assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert d["StateDirectory"] == ["alpacon-agent"]
        assert d["RuntimeDirectory"] == ["alpacon-agent"]
        assert d["ConfigurationDirectory"] == ["alpacon-agent"]
        assert d["RestartPreventExitStatus"] == ["2"], "a bad config (exit 2) must not loop"
        assert d["WantedBy"] == ["multi-user.target"]

    def test_paths_match_config_defaults(self) -> None:
        """The unit's directories are the config's default state dir and hook socket dir."""
        from agent.config import AgentConfig

        cfg = AgentConfig()
        assert cfg.state_dir == "/var/lib/alpacon-agent"
        assert os.path.dirname(cfg.hook.socket) == "/run/alpacon-agent"

    def test_capabilities_are_a_short_list(self) -> None:
        """Only the capabilities the agent uses stay in the bounding set."""
        d = _directives(UNIT.read_text())
        caps = set(" ".join(d["CapabilityBoundingSet"]).split())
        assert caps <= {
            "CAP_DAC_READ_SEARCH",
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_KILL",
            "CAP_CHOWN",
            "CAP_FOWNER",
        }
        assert "CAP_SYS_ADMIN" not in caps and "CAP_DAC_OVERRIDE" not in caps

    def test_every_option_kept_off_is_documented(self) -> None:
        """docs/install.md names each sandbox option the unit leaves off, with a reason."""
        doc = (REPO / "docs" / "install.md").read_text()
        for option in (
            "PrivateNetwork",
            "PrivateUsers",
            "DynamicUser",
            "IPAddressDeny",
            "ProcSubset",
            "ProtectProc",
            "ProtectHome",
            "RootDirectory",
        ):
            assert option in doc, f"{option} is not explained in docs/install.md"

    @pytest.mark.parametrize("section", ["Unit", "Service", "Install"])
    def test_sections_parse(self, section: str) -> None:
        """The file is plain INI with the three usual sections."""
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(UNIT.read_text())
        assert cp.has_section(section)
