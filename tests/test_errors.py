"""The one exception tree (agent.errors): every exception the agent raises is in it, drawn at its top."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import agent.errors as errors

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}


def _tree_classes() -> list[type[BaseException]]:
    return [v for _, v in inspect.getmembers(errors, inspect.isclass)
            if issubclass(v, BaseException) and v.__module__ == errors.__name__]


class TestTree:
    def test_no_exception_class_is_defined_outside_the_tree(self):
        """No module under agent/ or collectors/ defines its own exception on a builtin base."""
        found = []
        for path in [*ROOT.joinpath("agent").rglob("*.py"), *ROOT.joinpath("collectors").rglob("*.py")]:
            if path.name == "errors.py" and path.parent.name == "agent":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                    if bases & BUILTIN_EXCEPTIONS:
                        found.append(f"{path.relative_to(ROOT)}: {node.name}")
        assert found == []

    def test_every_class_is_in_one_branch_and_drawn(self):
        """Each exception of the tree is an AgentError, in exactly one of the three branches (but
        DropEvent, a decision, and ShipError, the common base of both ship errors), and is named
        in the drawn tree of the module docstring."""
        branches = (errors.RetryableError, errors.PermanentError, errors.BadInput)
        doc = errors.__doc__ or ""
        for cls in _tree_classes():
            assert issubclass(cls, errors.AgentError), cls
            assert cls.__name__ in doc, cls
            if cls in (errors.AgentError, *branches, errors.DropEvent, errors.ShipError):
                continue
            assert sum(issubclass(cls, b) for b in branches) == 1, cls

    def test_the_split_is_the_one_callers_rely_on(self):
        """Retryable: a spool that is full, an unreachable agent; permanent: refused batches and
        bad config; bad input: schema and producer errors, which stay ValueErrors for old callers."""
        assert issubclass(errors.SpoolFull, errors.RetryableError)
        assert issubclass(errors.HookClientError, errors.RetryableError)
        assert issubclass(errors.HookClientError, ConnectionError)
        assert issubclass(errors.RetryableShipError, errors.RetryableError)
        assert issubclass(errors.Rejected, errors.PermanentError)
        assert issubclass(errors.AuthError, errors.PermanentShipError)
        assert issubclass(errors.ConfigError, errors.PermanentError)
        assert issubclass(errors.SchemaError, errors.BadInput) and issubclass(errors.SchemaError, ValueError)
        assert issubclass(errors.InvalidEvent, errors.BadInput)
        assert issubclass(errors.InputError, errors.BadInput)

    def test_old_names_are_the_same_classes(self):
        """Modules that used to define an exception still hand out the same class under its name."""
        from agent import hookclient, schema
        from agent.cli import setup
        from agent.pipeline import processors
        from collectors.websh import queue, recorder

        assert processors.DropEvent is errors.DropEvent and processors.InvalidEvent is errors.InvalidEvent
        assert schema.SchemaError is errors.SchemaError
        assert hookclient.HookClientError is errors.HookClientError
        assert recorder.RecorderError is errors.RecorderError
        assert queue.DeliveryRefused is errors.DeliveryRefused
        assert setup.SetupError is errors.SetupError
