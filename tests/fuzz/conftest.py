"""Hypothesis profiles for every fuzz test under tests/fuzz/, and the ``fuzz`` marker on each.

- ``fuzz`` (the default): a few dozen examples per test, so the whole fuzz suite takes seconds and
  runs with every ``pytest`` / ``scripts/test.sh``;
- ``long``: ``HYPOTHESIS_PROFILE=long pytest tests/fuzz`` for a longer hunt (thousands of examples
  per test; ``HYPOTHESIS_MAX_EXAMPLES`` overrides the count).

No deadline (the machine may be loaded: a slow example is not a failure here; speed is measured by
``bench/``). Failing examples are printed with a ``@reproduce_failure`` blob; keep each that found a
bug as an ``@example`` on its test. Hypothesis' example database lives in ``.hypothesis/`` (ignored
by git).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

COMMON = {
    "deadline": None,
    "print_blob": True,
    # the fuzz tests build their own temporary files: the fixture-reuse check does not apply
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile("fuzz", max_examples=40, **COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "5000")), **COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.fuzz)
