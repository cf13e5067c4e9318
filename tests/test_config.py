"""The config boundary: every problem is reported with the dotted path of the bad key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, parse_config
from agent.errors import ConfigError

BIN = Path(sys.executable).parent / "alpacon-agent"


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    return subprocess.run([str(BIN), "check-config", str(f)], capture_output=True, text=True, timeout=60)


class TestCheckConfig:
    def test_defaults_are_valid(self, tmp_path):
        """An empty file is a complete, valid configuration."""
        r = check(tmp_path, "")
        assert r.returncode == 0, r.stderr

    def test_malformed_yaml(self, tmp_path):
        """Broken YAML exits 2 and says where."""
        r = check(tmp_path, "sink:\n  type: http\n   url: [\n")
        assert r.returncode == 2
        assert "malformed YAML at line" in r.stderr

    def test_unknown_key(self, tmp_path):
        """A typo is an error naming its full path."""
        r = check(tmp_path, "collectors:\n  journald:\n    enabeld: true\n")
        assert r.returncode == 2
        assert "collectors.journald.enabeld: unknown key" in r.stderr

    def test_wrong_type_and_choice(self, tmp_path):
        """Wrong types and values outside a choice name the key and the allowed values; all errors at once."""
        r = check(tmp_path, "batch:\n  max_events: lots\ncollectors:\n  journald:\n    min_level: loud\n")
        assert r.returncode == 2
        assert "batch.max_events:" in r.stderr
        assert "collectors.journald.min_level: 'loud' is not one of" in r.stderr

    def test_missing_token_file(self, tmp_path):
        """A token_file that does not exist is named."""
        r = check(tmp_path, "sink:\n  token_file: /nonexistent/token\n")
        assert r.returncode == 2
        assert "sink.token_file:" in r.stderr and "/nonexistent/token" in r.stderr and "does not exist" in r.stderr

    def test_top_level_not_mapping(self, tmp_path):
        """A YAML list at the top is refused."""
        r = check(tmp_path, "- a\n- b\n")
        assert r.returncode == 2 and "must be a mapping" in r.stderr

    @pytest.mark.parametrize(
        "text,needle",
        [
            ("sink:\n  url: ftp://x\n", "sink.url: must start with http"),
            ("http:\n  listen: nowhere\n", "http.listen: must be HOST:PORT"),
            ("redact:\n  patterns: ['([']\n", "redact.patterns: pattern 0"),
            ("sink:\n  type: file\n", "needs 'path'"),
            ("spool:\n  max_bytes: 10\n", "spool.max_bytes:"),
        ],
    )
    def test_value_checks(self, tmp_path, text, needle):
        """Values are checked, not just types."""
        r = check(tmp_path, text)
        assert r.returncode == 2
        assert needle in r.stderr

    def test_huge_and_binary_files(self, tmp_path):
        """A huge file and a binary file are refused cleanly."""
        f = tmp_path / "big.yaml"
        f.write_text("# " + "x" * 2_000_000)
        with pytest.raises(ConfigError, match="larger than 1 MiB"):
            load_config(f)
        f.write_bytes(b"\xff\xfe\x00\x01")
        with pytest.raises(ConfigError, match="cannot be read"):
            load_config(f)

    def test_missing_file(self, tmp_path):
        """A named file that does not exist is an error (the built-in defaults are only for the default path)."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(tmp_path / "nope.yaml")

    def test_token_read_from_file(self, tmp_path):
        """The token comes from token_file, stripped."""
        t = tmp_path / "token"
        t.write_text("  secret-token\n")
        (tmp_path / "a.yaml").write_text(f"sink:\n  token_file: {t}\n")
        assert load_config(tmp_path / "a.yaml").sink.token() == "secret-token"

    def test_shipped_default_config_validates(self):
        """config/agent.yaml (installed as /etc/alpacon-agent/agent.yaml) is valid, changes no built-in
        default (it documents them) and names no token (``setup`` adds it)."""
        root = Path(__file__).resolve().parents[1]
        cfg = load_config(root / "config" / "agent.yaml")
        assert cfg.sink.type == "http" and cfg.sink.token_file is None
        assert cfg.model_dump() == parse_config({}).model_dump()
