"""Redaction: secrets in any string of an event's data are replaced before it is spooled.

Each pattern either has a named group ``secret`` (only that span is replaced, so the
reader still sees *what* was hidden: ``password=[REDACTED]``) or is replaced whole.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any

from agent.typing import Event

#: Built-in patterns: credentials that show up in command lines and log lines.
#: Each is paired in BUILTIN_TRIGGERS with lower-case words one of which any match contains,
#: so that the common line (no secret) costs a few substring checks, not nine regex scans.
BUILTIN_PATTERNS: tuple[str, ...] = (
    # key=value / key: value forms
    r"(?i)\b(?:password|passwd|pwd|pass|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)"
    r"\s*[=:]\s*(?P<secret>\"[^\"]*\"|'[^']*'|[^\s&;,\"']+)",
    # --password VALUE / --password=VALUE (and friends)
    r"(?i)--(?:password|passwd|pass|token|secret|api-key|access-key|client-secret)(?:=|\s+)(?P<secret>\"[^\"]*\"|'[^']*'|\S+)",
    # mysql -pSECRET (the password glued to -p), in the mysql family of clients
    r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mariadb|mariadb-dump)\b[^\n|;&]*?\s-p(?P<secret>[^\s-][^\s]*)",
    # HTTP authorization headers
    r"(?i)\bauthorization\s*:\s*(?:bearer|basic|token|digest)\s+(?P<secret>[A-Za-z0-9._~+/=:-]+)",
    r"(?i)\b(?:bearer)\s+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)",
    # AWS secret access keys (named) and access key ids
    r"(?i)aws_?secret_?access_?key\W{0,3}\s*[=:]?\s*[\"']?(?P<secret>[A-Za-z0-9/+=]{40})",
    r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b",
    # credentials in URLs: scheme://user:secret@host
    r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:(?P<secret>[^\s@/]+)@",
    # private key blocks
    r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----(?P<secret>[\s\S]*?)-----END (?:[A-Z]+ )?PRIVATE KEY-----",
)
BUILTIN_TRIGGERS: tuple[tuple[str, ...], ...] = (
    ("pass", "pwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey", "access_key", "access-key"),
    ("--",),
    ("mysql", "mariadb"),
    ("authorization",),
    ("bearer",),
    ("secret",),
    ("akia", "asia"),
    ("://",),
    ("private key",),
)


#: Where free text lives in each kind's data; the other fields are names, numbers and enums
#: checked by the schema. Kinds not listed are walked whole.
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "system_log": ("message",),  # extra: journal fields and RFC 5424 structured data, not free text
    "websh_command": ("command", "extra"),
    "command": ("line", "result", "reason", "extra"),
    "webftp_transfer": ("path", "object_name", "error", "extra"),
    "user_activity": ("details", "extra"),
    "websh_session": ("browser", "extra"),
    "metrics": (),
}


def _trie_pattern(words: set[str]) -> str:
    """A regex matching any of ``words``, with shared prefixes factored out."""
    trie: dict[str, dict] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        if set(node) == {""}:
            return ""
        alts = [re.escape(ch) + build(sub) for ch, sub in sorted(node.items()) if ch]
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


def changed_each(redact: Callable[[str], str], joined: str) -> dict[int, str]:
    """``{index: redact(line)}`` for the lines of ``joined`` that ``redact`` changes, line by line."""
    out: dict[int, str] = {}
    for i, text in enumerate(joined.split("\n")):
        r = redact(text)
        if r != text:
            out[i] = r
    return out


class Redactor:
    """Replaces secrets in strings and, recursively, in an event's ``data``."""

    def __init__(
        self,
        patterns: Iterable[str] = (),
        *,
        builtin: bool = True,
        replacement: str = "[REDACTED]",
    ) -> None:
        self.replacement = replacement
        # one C-level scan decides whether any built-in rule can match at all
        # (on lower-cased text: an IGNORECASE alternation is ten times slower in CPython's re,
        # and a flat alternation twice as slow as the same words as a trie)
        self._any_trigger = re.compile(_trie_pattern({t for ts in BUILTIN_TRIGGERS for t in ts}))
        self._custom = bool(list(patterns))
        rules: list[tuple[tuple[str, ...] | None, re.Pattern[str]]] = []
        if builtin:
            rules += [(t, re.compile(p)) for t, p in zip(BUILTIN_TRIGGERS, BUILTIN_PATTERNS, strict=True)]
        rules += [(None, re.compile(p)) for p in patterns]
        self._rules = rules

    def _sub(self, m: re.Match[str]) -> str:
        if "secret" in m.re.groupindex and m.group("secret") is not None:
            start, end = m.span("secret")
            s0 = m.start()
            whole = m.group(0)
            return whole[: start - s0] + self.replacement + whole[end - s0 :]
        return self.replacement

    def redact_text(self, text: str) -> str:
        """``text`` with every secret replaced."""
        lowered = text.lower()
        if not self._custom and self._any_trigger.search(lowered) is None:
            return text
        lower: str | None = lowered
        for triggers, rx in self._rules:
            if triggers is not None:
                if lower is None:
                    lower = text.lower()
                if not any(t in lower for t in triggers):
                    continue
            if rx.search(text) is not None:
                text = rx.sub(self._sub, text)
                lower = None
        return text

    def changed_lines(self, joined: str) -> dict[int, str]:
        """``{index: redact_text(line)}`` for the lines of ``joined`` (split on newlines, none
        inside a line) that redaction changes — the same as ``redact_text`` on each line, with
        one scan of the whole text for the common case of no secret at all."""
        if self._custom or not joined.isascii():
            # every rule on every line (custom rules), or lower() may change lengths
            return changed_each(self.redact_text, joined)
        lines: list[str] | None = None
        out: dict[int, str] = {}
        ends: list[int] = []
        for m in self._any_trigger.finditer(joined.lower()):
            if lines is None:
                lines = joined.split("\n")
                # the offset of the newline after each line (a match never starts on one)
                ends = [e + i for i, e in enumerate(accumulate(map(len, lines)))]
            i = bisect_left(ends, m.start())
            if i not in out:  # redacted once, whatever else matches on that line
                out[i] = self.redact_text(lines[i])
        return {i: r for i, r in out.items() if r != lines[i]} if lines is not None else out

    def redact_value(self, value: Any) -> Any:
        """Strings redacted inside lists and dicts; other values returned as they are."""
        return redact_value(self.redact_text, value)

    def __call__(self, event: Event) -> Event:
        return redact_event(self.redact_text, event)


def redact_value(redact: Callable[[str], str], value: Any) -> Any:
    """``value`` with ``redact`` applied to every string inside it (lists and dicts walked)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(redact, v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(redact, v) for v in value]
    return value


def redact_event(redact: Callable[[str], str], event: Event) -> Event:
    """``event`` with ``redact`` applied to the free text of its data (:data:`TEXT_FIELDS`; a
    kind not listed there is walked whole), changed in place."""
    fields = TEXT_FIELDS.get(event.get("kind"))
    data = event["data"]
    if fields is None:
        event["data"] = redact_value(redact, data)
        return event
    for f in fields:
        v = data.get(f)
        if v is not None:
            data[f] = redact_value(redact, v)
    return event
