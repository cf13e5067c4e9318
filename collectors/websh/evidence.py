"""Weighs the three witnesses of one command: the kernel's exec trail, the typed keys, the shell's marks.

In order of trust:

1. the kernel (:mod:`.exectrail`): the programs the command ran, with argv; silent for builtins;
2. the keys the root relay saw typed and echoed at the shell (the user cannot forge what the
   recorder reads from the PTY), when the line was rebuilt exactly (no cursor movement, Tab
   completion or history recall the relay cannot follow);
3. the marks the shell hooks print (text, cwd, exit status): written by code the user can
   change, so they may add what the others lack but never override what they contradict.

:func:`weigh` decides the command's text, which witnesses agree with it, and whether the marks
were contradicted (``tampered``, with the reason).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from collectors.websh.programs import Program

#: builtins that are also programs on PATH: naming one does not mean the kernel must see it run
_BUILTINS = frozenset({"echo", "printf", "test", "[", "true", "false", "kill", "pwd", "time", "type", "command",
                       "cd", "read", "umask", "wait", "getopts", "hash", "ulimit", "alias", "fc", "jobs", "bg",
                       "fg", "print", "which", "where", "whence", "history", "set", "export", "source", "."})
#: the shell words that precede the program name in a command line
_PREFIXES = frozenset({"sudo", "exec", "command", "builtin", "env", "nohup", "time", "nice", "then", "do", "!"})


@dataclass(slots=True)
class Verdict:
    """What the witnesses say about one command."""

    command: str
    source: str
    witnesses: list[str] = field(default_factory=list)
    tampered: str | None = None


def _norm(text: str) -> str:
    return " ".join(text.split())


def _names(text: str) -> set[str]:
    """The basenames of every word of ``text`` (the candidates for a program it runs)."""
    out: set[str] = set()
    for raw in text.replace("|", " ").replace(";", " ").replace("&", " ").replace("(", " ").split():
        w = raw.strip("'\"`$")
        if w:
            out.add(os.path.basename(w))
    return out


def _ran(programs: Sequence[Program]) -> set[str]:
    out: set[str] = set()
    for p in programs:
        if p.argv:
            out.add(os.path.basename(p.argv[0]))
            if len(p.argv) > 1 and "/" in p.argv[1]:  # a script: the kernel runs its interpreter with its path
                out.add(os.path.basename(p.argv[1]))
        if p.exe:
            out.add(os.path.basename(p.exe))
    return out


def kernel_agrees(text: str, programs: Sequence[Program]) -> bool | None:
    """Whether a program the kernel saw is named in ``text``; None when the kernel saw none."""
    if not programs:
        return None
    return bool(_names(text) & _ran(programs))


def _first_program(text: str, path: str | None) -> str | None:
    """The program ``text`` would run first, when it names one found on ``path``."""
    for w in text.split():
        if w in _PREFIXES or "=" in w.split("/")[0]:
            continue
        if w in _BUILTINS:
            return None
        if shutil.which(w, path=path) is not None:
            return os.path.basename(w)
        return None
    return None


def weigh(
    marks_text: str | None,
    typed_text: str | None,
    typed_exact: bool,
    programs: Sequence[Program],
    *,
    path: str | None = None,
) -> Verdict:
    """The command's text and evidence (see the module's docstring)."""
    typed = typed_text if typed_text and typed_text.strip() else None
    if typed is not None and ("!" in typed or typed.lstrip().startswith("^")):
        typed_exact = False  # history expansion: the shell runs what the keys only point to
    if marks_text is not None and typed is not None and _norm(typed).endswith(_norm(marks_text)) and (
        _norm(typed) != _norm(marks_text) and typed_exact
    ):
        # the history kept only the last line of a multi-line command (cmdhist off): the keys say it all
        v = Verdict(typed, "input", ["input"])
        if kernel_agrees(typed, programs):
            v.witnesses.insert(0, "kernel")
        return v
    if marks_text is not None and typed is not None and typed_exact and _norm(marks_text) != _norm(typed):
        v = Verdict(typed, "input", ["input"])
        v.tampered = f"the shell's marks said {marks_text[:200]!r}, the keys typed were {typed[:200]!r}"
        if kernel_agrees(typed, programs):
            v.witnesses.insert(0, "kernel")
        return v
    if marks_text is not None:
        v = Verdict(marks_text, "shell", ["marks"])
        if typed is not None and (typed_exact or _norm(marks_text) == _norm(typed)):
            v.witnesses.append("input")
        agrees = kernel_agrees(marks_text, programs)
        if agrees:
            v.witnesses.insert(0, "kernel")
        elif agrees is False:
            named = _first_program(marks_text, path)
            if named is not None and named not in _ran(programs):
                ran = sorted(_ran(programs))[:5]
                v.tampered = f"the shell's marks said {marks_text[:200]!r}, the kernel ran {ran} and no {named}"
        return v
    if typed is not None:
        v = Verdict(typed, "input", ["input"])
        if kernel_agrees(typed, programs):
            v.witnesses.insert(0, "kernel")
        return v
    if programs:
        return Verdict(programs[0].text(), "kernel", ["kernel"])
    return Verdict("", "input", [])


def kernel_exit(programs: Sequence[Program], shell_pid: int) -> tuple[int | None, int | None]:
    """``(exit status, duration ms)`` from the kernel: the last program the shell itself started
    (a pipeline's last stage), and the span from the first start to the last end."""
    direct = [p for p in programs if p.ppid == shell_pid and p.ended] or [p for p in programs if p.ended]
    if not direct:
        return None, None
    last = max(direct, key=lambda p: p.start_ns)
    start = min(p.start_ns for p in programs)
    end = max(p.end_ns or p.start_ns for p in programs)
    return last.exit_status, max(0, (end - start) // 1_000_000)
