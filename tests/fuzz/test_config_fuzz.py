"""Fuzzing the config boundary: garbage bytes, random YAML documents, hostile alias graphs, wrong values.

Invariants: ``load_config`` returns an AgentConfig or raises ConfigError (nothing else escapes); an
error is bounded (each line, the number of lines); an accepted document never expands past the
alias budget.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from agent import safeyaml
from agent.config import MAX_PROBLEM_CHARS, MAX_PROBLEMS, AgentConfig, load_config, parse_config
from agent.errors import ConfigError


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as d:
        yield Path(d)


def load_bytes(workdir: Path, raw: bytes) -> AgentConfig | ConfigError:
    """``load_config`` on a file holding ``raw``: the config, or the ConfigError (anything else fails)."""
    f = workdir / "agent.yaml"
    f.write_bytes(raw)
    try:
        return load_config(f)
    except ConfigError as exc:
        return exc


def assert_bounded(err: ConfigError) -> None:
    assert err.problems, "a ConfigError without a problem"
    assert len(err.problems) <= MAX_PROBLEMS + 1
    for line in err.problems:
        assert len(line) <= MAX_PROBLEM_CHARS + 1, line[:200]


# keys the config has, at the top and one level down, so that random documents reach the validators
SECTIONS = {
    name: list(getattr(field.annotation, "model_fields", {})) for name, field in AgentConfig.model_fields.items()
}
KEYS = st.sampled_from([*SECTIONS, "x", "<<"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.text(alphabet="({[*&!|>%@`\\\"' \t\n:#-?,", max_size=30),
    st.sampled_from(["debug", "info", "http", "file", "0o777", "1e309", "-1", ".inf", "~", "2001-12-14"]),
)


def documents() -> st.SearchStrategy[Any]:
    """Nested mappings and lists shaped like a config (known section and key names, any values)."""
    leaf = st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    )
    section = st.fixed_dictionaries(
        {},
        optional={
            k: leaf for k in ["enabled", "paths", "socket", "mode", "url", "token_file", "patterns", "max_events"]
        },
    )
    return st.dictionaries(KEYS, st.one_of(leaf, section), max_size=6)


class TestConfigFuzz:
    @given(raw=st.binary(max_size=2048))
    @example(raw=b"\xff\xfe")
    @example(raw=b"log_level: " + b"1" * 5000)  # an int Python refuses to convert: ValueError, not YAMLError
    @example(raw=b"a: &a [*a]")
    @example(raw=b"[" * 5000)
    def test_garbage_bytes(self, workdir: Path, raw: bytes) -> None:
        """Any bytes: a config or a bounded ConfigError."""
        out = load_bytes(workdir, raw)
        if isinstance(out, ConfigError):
            assert_bounded(out)

    @given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=2048))
    @example(text="redact:\n  patterns: ['" + "(" * 3000 + "']\n")  # RecursionError in re.compile
    @example(text="? [a, b]\n: 1\n")  # a complex (unhashable) key
    @example(text="!!python/object:os.system {}")  # a tag the safe loader must refuse
    @example(text="a: !!binary AAAA\nb: !!timestamp 2001-12-14\nc: !!set {x}\n")
    def test_garbage_text(self, workdir: Path, text: str) -> None:
        """Any UTF-8 text (YAML syntax characters included): a config or a bounded ConfigError."""
        out = load_bytes(workdir, text.encode())
        if isinstance(out, ConfigError):
            assert_bounded(out)

    @given(doc=documents())
    @example(doc={"log_level": ["x"] * 10_000})
    @example(doc={"hook": {"mode": "0o777"}, "sink": {"url": "ftp://x", "token_file": "/etc/shadow"}})
    def test_random_documents(self, workdir: Path, doc: Any) -> None:
        """Well-formed YAML of config shape with wrong values anywhere: a config or a bounded ConfigError,
        and the same verdict from ``parse_config`` on the parsed data."""
        try:
            text = yaml.safe_dump(doc, allow_unicode=True)
        except (yaml.YAMLError, ValueError):  # PyYAML cannot represent some keys (e.g. NaN as a key)
            return
        out = load_bytes(workdir, text.encode())
        if isinstance(out, ConfigError):
            assert_bounded(out)
        else:
            assert parse_config(safeyaml.load(text)) == out

    @given(width=st.integers(1, 12), levels=st.integers(1, 8), key=st.sampled_from(["log_level", "server", "x"]))
    @example(width=9, levels=8, key="log_level")  # the billion laughs (9**8 scalars)
    def test_alias_graphs(self, workdir: Path, width: int, levels: int, key: str) -> None:
        """Layered aliases of any width and depth: refused exactly when the expansion passes the budget."""
        lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
        for i in range(1, levels):
            lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
        text = "\n".join(lines) + f"\n{key}: *l{levels - 1}\n"
        # what the aliases stand for: the alias in ``key`` plus every alias inside the layers
        sizes = [1 + width]
        for _ in range(1, levels):
            sizes.append(1 + width * sizes[-1])
        expanded = sizes[-1] + sum(width * sizes[i - 1] for i in range(1, levels))
        out = load_bytes(workdir, text.encode())
        if expanded > safeyaml.MAX_ALIAS_NODES:
            assert isinstance(out, ConfigError) and "aliases expand to more than" in out.problems[0], out
        else:
            assert not (isinstance(out, ConfigError) and "aliases expand" in out.problems[0]), out
            if isinstance(out, ConfigError):
                assert_bounded(out)

    @given(
        value=st.one_of(
            st.text(max_size=300),
            st.binary(max_size=50).map(repr),
            st.integers(),
            st.lists(st.text(max_size=5), max_size=3),
        )
    )
    @example(value="0" * 300)  # found: token_file longer than NAME_MAX raised OSError out of validation
    @example(value="a\x00b")  # a NUL byte in a path
    @example(value="/proc/self/root/" * 300)  # longer than PATH_MAX
    def test_values_of_every_scalar_key(self, value: Any) -> None:
        """Any value under every key of every section: parse_config gives a config or a bounded ConfigError."""
        for section, keys in SECTIONS.items():
            for key in keys or [None]:
                data = {section: value} if key is None else {section: {key: value}}
                try:
                    parse_config(data)
                except ConfigError as exc:
                    assert_bounded(exc)
