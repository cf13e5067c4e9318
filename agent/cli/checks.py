"""A doctor check's result: what was checked, how it went and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the doctor's report: what was checked, how it went and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "OK", detail)


def warn(name: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(name, "WARN", detail, fix)


def fail(name: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(name, "FAIL", detail, fix)
