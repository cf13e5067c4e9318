"""PyYAML's safe loader with budgets, for YAML that a careless or hostile hand may have written.

Aliases make a YAML graph whose expanded size grows exponentially with its length (the
"billion laughs" bomb): a few hundred bytes can stand for billions of nodes, and any code
that walks the result (a validator, ``repr`` in an error message) walks them all. This
loader counts, while composing, the nodes every alias stands for and refuses the document
once they pass a budget; it also refuses an alias to a node that contains it (a cycle) and
nesting deeper than a limit (the composer recurses once per level).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import Event
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

try:  # libyaml's scanner and parser (C) when PyYAML was built with it; composing stays here
    from yaml._yaml import CParser

    HAVE_LIBYAML = True
except ImportError:  # pragma: no cover - PyYAML without libyaml
    HAVE_LIBYAML = False

#: nodes that aliases may stand for in one document, counted as if expanded
MAX_ALIAS_NODES = 10_000
#: levels of nested collections
MAX_DEPTH = 64


class YAMLBudgetError(ComposerError):
    """The document is well-formed but over a budget (alias expansion, depth); nothing was built."""


def _refuse(problem: str, mark: Any) -> YAMLBudgetError:
    return YAMLBudgetError(None, None, problem, mark)


class _Budget(Composer):
    """The composer of ``yaml.SafeLoader`` that refuses alias expansion past ``max_alias_nodes`` and
    nesting past ``max_depth``; the loaders below give it a scanner and parser."""

    if TYPE_CHECKING:  # from the parser the loader classes mix in
        def check_event(self, *choices: type[Event]) -> bool: ...
        def peek_event(self) -> Event: ...

    def _budgets(self, max_alias_nodes: int, max_depth: int) -> None:
        self.max_alias_nodes = max_alias_nodes
        self.max_depth = max_depth
        self._alias_nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def _size(self, node: Node) -> int:
        """Nodes in ``node``'s subtree with every alias expanded (memoised: shared nodes cost once)."""
        key = id(node)
        size = self._sizes.get(key)
        if size is None:
            size = 1
            if isinstance(node, SequenceNode):
                size += sum(self._size(n) for n in node.value)
            elif isinstance(node, MappingNode):
                size += sum(self._size(k) + self._size(v) for k, v in node.value)
            self._sizes[key] = size
        return size

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = cast(yaml.AliasEvent, self.peek_event())
            target = self.anchors.get(event.anchor)
            if target is not None:
                if target.end_mark is None:  # still being composed: the alias is inside its anchor
                    raise _refuse("an alias refers to a node that contains it (a cycle)", event.start_mark)
                self._alias_nodes += self._size(target)
                if self._alias_nodes > self.max_alias_nodes:
                    raise _refuse(f"aliases expand to more than {self.max_alias_nodes} nodes (an alias bomb?)",
                                  event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise _refuse(f"collections nested deeper than {self.max_depth} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class PyBudgetLoader(Reader, Scanner, Parser, _Budget, SafeConstructor, Resolver):
    """The budgeted safe loader on PyYAML's pure-Python scanner and parser."""

    def __init__(self, stream: str | bytes, max_alias_nodes: int = MAX_ALIAS_NODES, max_depth: int = MAX_DEPTH) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._budgets(max_alias_nodes, max_depth)


if HAVE_LIBYAML:

    class CBudgetLoader(_Budget, CParser, SafeConstructor, Resolver):
        """The budgeted safe loader on libyaml's scanner and parser (several times faster)."""

        def __init__(self, stream: str | bytes, max_alias_nodes: int = MAX_ALIAS_NODES,
                     max_depth: int = MAX_DEPTH) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._budgets(max_alias_nodes, max_depth)

    BudgetLoader: type = CBudgetLoader
else:  # pragma: no cover
    BudgetLoader = PyBudgetLoader


def load(text: str | bytes, max_alias_nodes: int = MAX_ALIAS_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """The single document in ``text`` as Python objects (``yaml.safe_load`` semantics, with the budgets).

    Raises ``yaml.YAMLError`` (:class:`YAMLBudgetError` for a budget) and ``ValueError`` for a
    scalar Python cannot hold (an integer of more than 4300 digits).
    """
    loader = BudgetLoader(text, max_alias_nodes, max_depth)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
