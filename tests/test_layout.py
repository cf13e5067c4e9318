"""The layout holds: small modules, no import cycles, collectors apart, one composition root.

Every module's imports are read with ``ast`` (imports inside functions and under ``TYPE_CHECKING``
count too), resolved to the project's own modules, and checked against the rules that
``docs/architecture.md`` states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "collectors", "receiver")
MAX_LINES = 400
# The only core modules that may name collectors: they put the agent together.
COMPOSITION_ROOTS = frozenset({"agent.service", "agent.cli.main"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
        # the C extensions' sources (setup.py) are modules too; they import no project module
        for path in sorted((ROOT / pkg).rglob("*.c")):
            found[module_name(path)] = path
    return found


MODULES = project_modules()


def _resolve(name: str) -> str | None:
    """The project module an imported dotted name stands for (the longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(name: str) -> set[str]:
    """Project modules that ``name`` imports, wherever in the file the import stands."""
    path = MODULES[name]
    if path.suffix == ".c":
        return set()
    return imports_in(path.read_text(), name, is_pkg=path.name == "__init__.py")


def imports_in(source: str, name: str, is_pkg: bool = False) -> set[str]:
    """Project modules that the module ``name`` with this source imports."""
    tree = ast.parse(source, name)
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                # `from pkg import mod` imports a submodule when one exists by that name.
                target = _resolve(f"{mod}.{alias.name}") or _resolve(mod)
                if target:
                    out.add(target)
    out.discard(name)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def collector_of(name: str) -> str | None:
    """The collector a module belongs to (``collectors.syslog.parse`` -> ``collectors.syslog``)."""
    parts = name.split(".")
    if parts[0] != "collectors" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative DFS with colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for start in sorted(graph):
        if colour[start] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        colour[start] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if colour.get(nxt) == grey:
                return path[path.index(nxt):] + [nxt]
            if colour.get(nxt) == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


class TestFindCycle:
    """The checker itself can fail: it finds cycles that are there."""

    def test_finds_a_cycle(self) -> None:
        """A three-module circle is reported with its members."""
        cycle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})
        assert cycle is not None and set(cycle) == {"a", "b", "c"}

    def test_no_cycle_in_a_tree(self) -> None:
        """A diamond is not a cycle."""
        assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None

    def test_reads_imports_inside_functions(self) -> None:
        """An import inside a function body, a relative one and a submodule import are edges too."""
        src = "import os\ndef f():\n    from agent.config import X\n    from . import spool\n"
        assert imports_in(src, "agent.wire") == {"agent.config", "agent.spool"}


class TestLayout:
    """The rules of docs/architecture.md, checked on every module."""

    def test_modules_found(self) -> None:
        """The walk sees the project (a broken walk would pass every rule)."""
        assert {"agent.service", "agent.pipeline.batcher", "collectors.journald"} <= MODULES.keys()
        assert "agent.config" in GRAPH["agent.service"]

    @pytest.mark.parametrize("name", sorted(MODULES))
    def test_module_size(self, name: str) -> None:
        """No module is over 400 lines."""
        n = len(MODULES[name].read_text().splitlines())
        assert n <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {n} lines (max {MAX_LINES})"

    def test_no_import_cycle(self) -> None:
        """No import cycle among the project's modules, imports inside functions included."""
        cycle = find_cycle(GRAPH)
        assert cycle is None, "import cycle: " + " -> ".join(cycle or [])

    def test_collectors_stay_apart(self) -> None:
        """No collector imports another collector (derivers are shared by the log sources)."""
        bad = []
        for name, deps in GRAPH.items():
            own = collector_of(name)
            if own is None:
                continue
            for dep in deps:
                other = collector_of(dep)
                if other and other != own and other != "collectors.derivers":
                    bad.append(f"{name} -> {dep}")
        assert not bad, bad

    def test_derivers_import_no_source(self) -> None:
        """Derivers read events; they import no log source."""
        bad = [
            f"{n} -> {d}"
            for n, deps in GRAPH.items()
            if collector_of(n) == "collectors.derivers"
            for d in deps
            if collector_of(d) not in (None, "collectors.derivers")
        ]
        assert not bad, bad

    def test_core_does_not_name_collectors(self) -> None:
        """Only the composition roots in agent/ import collectors."""
        bad = [
            f"{n} -> {d}"
            for n, deps in GRAPH.items()
            if n.startswith("agent") and n not in COMPOSITION_ROOTS
            for d in deps
            if d.startswith("collectors")
        ]
        assert not bad, bad

    def test_receiver_is_apart_from_the_agent(self) -> None:
        """The reference backend shares only the wire contract with the agent, never its collectors."""
        bad = [f"{n} -> {d}" for n, deps in GRAPH.items() if n.startswith("receiver") for d in deps
               if d.startswith("collectors") or d in COMPOSITION_ROOTS]
        assert not bad, bad


class TestArchitectureDoc:
    """docs/architecture.md keeps the picture current."""

    def test_names_every_folder(self) -> None:
        """Every package folder under agent/, collectors/ and receiver/ is named in the doc."""
        doc = (ROOT / "docs" / "architecture.md").read_text()
        folders = sorted({p.parent.relative_to(ROOT).as_posix() for pkg in PACKAGES
                          for p in (ROOT / pkg).rglob("__init__.py")} - set(PACKAGES))
        missing = [f for f in folders if f.split("/", 1)[1] + "/" not in doc]
        assert folders and not missing, missing

    def test_readme_points_to_it(self) -> None:
        assert "docs/architecture.md" in (ROOT / "README.md").read_text()
