"""Redaction: secrets in any string of an event's data are replaced before it is spooled.

Each pattern either has a named group ``secret`` (only that span is replaced, so the
reader still sees *what* was hidden: ``password=[REDACTED]``) or is replaced whole.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate, compress
from typing import Any

from agent.typing import Event

try:  # the trigger scan in C (_scan.c), built with the package where a C compiler is at hand
    from agent.pipeline import _scan  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the Python scan below gives the same results
    _scan = None

#: Built-in patterns: credentials that show up in command lines and log lines.
#: Each is paired in BUILTIN_TRIGGERS with lower-case words one of which any match contains,
#: so that the common line (no secret) costs a few substring checks, not a dozen regex scans.
#: The token shapes follow detect-secrets' detectors (GitHub, GitLab, Slack, Stripe, npm, PyPI,
#: OpenAI, AWS, JWT, private keys), narrowed to what a match must start with.
#: keys whose value is a secret, anywhere in a longer key (DB_PASSWORD, PGPASSWORD, GITHUB_TOKEN), and
#: the short ones (pass, pwd) only as a whole key or its last part (MYSQL_PWD, my.pass; not bypass);
#: an upper-case PWD alone is the working directory (sudo's PWD=/root, the shell's PWD, OLDPWD).
#: The key's first letter is matched by a class and the rest chosen by a look back at it: a
#: pattern that starts with a class lets the regex engine skip to candidate positions in C.
_SUFFIX = r"(?:[_\-]?(?:access[_\-]?)?key|[_\-]?id|\d)?"
_KEY = (r"[PpSsTtAaCc](?:(?<=[Pp])(?i:assword|asswd(?<!\(passwd)|assphrase|rivate[_-]?key)(?i:" + _SUFFIX + r")"
        r"|(?<=[Ss])(?i:ecret" + _SUFFIX + r")|(?<=[Tt])(?i:oken" + _SUFFIX + r")"
        r"|(?<=[Aa])(?i:pi[_-]?key|ccess[_-]?key" + _SUFFIX + r")|(?<=[Cc])(?i:lient[_-]?secret" + _SUFFIX + r")"
        r"|(?<=[Pp])(?i:ass(?:(?<=[_.\-]pass)|(?<![\w.\-]pass))|wd(?:(?<=[_.\-]pwd)|(?<![\w.\-]pwd)(?<!(?-i:PWD)))))")
_QUOTED_OR_WORD = r"\"[^\"]*\"|'[^']*'"
BUILTIN_PATTERNS: tuple[str, ...] = (
    # key=value / key: value forms; the key may be prefixed (DB_PASSWORD, PGPASSWORD, MYSQL_PWD,
    # GITHUB_TOKEN) or quoted ("password": "x"); the working directory (PWD=/root, OLDPWD=…) is
    # not a secret, nor PAM's "(passwd:chauthtok)"
    _KEY + r"[\"']?\s*[=:]\s*(?P<secret>" + _QUOTED_OR_WORD + r"|[^\s&;,\"']+)",
    # --password VALUE / --password=VALUE (and --http-password, --ftp-password …)
    r"(?i)--(?!no-|skip-)(?:[\w\-]*-)?(?:password|passwd|pass|token|secret|api-key|access-key|client-secret)"
    r"(?:=|\s+(?=[^\s-]))(?P<secret>" + _QUOTED_OR_WORD + r"|\S+)",
    # command-line clients' own password options: mysql -pSECRET / -p'two words' (glued to -p),
    # curl -u user:SECRET (--user, --proxy-user), sshpass -p SECRET
    r"(?:(?:mysql|mariadb)(?<![\w.\-]mysql)(?<![\w.\-]mariadb)(?:dump|admin|import|check|-dump)?\b[^\n|;&]*?\s-p"
    r"|curl(?<![\w.\-]curl)\b[^\n|;&]*\s(?:-u|--user|--proxy-user|-U)(?:=|\s*)[\"']?[^\s:\"']*:"
    r"|sshpass(?<![\w.\-]sshpass)\b[^\n|;&]*?\s-p\s*)"
    r"(?P<secret>" + _QUOTED_OR_WORD + r"|[^\s'\"-][^\s\"']*)",
    # HTTP authorization headers, bearer tokens
    r"(?:[Aa](?<![\w]a)(?<![\w]A)(?i:uthorization\s*:\s*(?:bearer|basic|token|digest)\s+)"
    r"|[Bb](?<![\w]b)(?<![\w]B)(?i:earer)\s+(?=[A-Za-z0-9._~+/-]{16}))(?P<secret>[A-Za-z0-9._~+/=:-]+)",
    # AWS secret access keys (named)
    r"(?i)aws_?secret_?access_?key\W{0,3}\s*[=:]?\s*[\"']?(?P<secret>[A-Za-z0-9/+=]{40})",
    # credentials in URLs: scheme://user:secret@host (the user may be empty: redis://:pw@host)
    r"://[^\s:/@]*:(?P<secret>[^\s@/]+)@",
    # well-known token shapes, replaced whole: AWS access key ids, GitHub, GitLab, Slack (and its
    # webhooks), Stripe, npm, PyPI, Google API keys, OpenAI, and JSON Web Tokens (header and
    # payload are base64url JSON objects)
    r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)(?<![A-Za-z0-9]....)[0-9A-Z]{16}\b"
    r"|ghp_[A-Za-z0-9]{36,255}|gho_[A-Za-z0-9]{36,255}|ghu_[A-Za-z0-9]{36,255}|ghs_[A-Za-z0-9]{36,255}"
    r"|ghr_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"
    r"|rk_live_[0-9a-zA-Z]{24,}|sk_live_[0-9a-zA-Z]{24,}|npm_[A-Za-z0-9]{36}"
    r"|pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}|AIza[0-9A-Za-z_\-]{35}"
    r"|sk-(?:proj-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}"
    r"|eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
    # private key blocks (to the end of the text when the END line is elsewhere)
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?P<secret>[\s\S]+?)"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
)
#: (Each word as narrow as the rule allows: "api_key", not "api", which every "GET /api/…" line
#: of a web server holds; "ghp_", not "gh", which "Nightly" holds. tests/test_redact.py holds
#: every match of a rule to containing one of its words.)
BUILTIN_TRIGGERS: tuple[tuple[str, ...], ...] = (
    ("pass", "pwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey", "access_key", "access-key",
     "private"),
    ("--",),
    ("mysql", "mariadb", "curl", "sshpass"),
    ("authorization", "bearer"),
    ("secret",),
    ("://",),
    ("akia", "asia", "abia", "acca", "a3t", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox",
     "slack", "k_live_", "npm_", "pypi-", "aiza", "t3blbkfj", "eyj"),
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
        # each built-in rule runs only on text (lower-cased) holding one of its trigger words
        rules: list[tuple[re.Pattern[str] | None, re.Pattern[str]]] = []
        if builtin:
            rules += [(re.compile("|".join(map(re.escape, t))), re.compile(p))
                      for t, p in zip(BUILTIN_TRIGGERS, BUILTIN_PATTERNS, strict=True)]
        rules += [(None, re.compile(p)) for p in patterns]
        self._rules = rules
        self._numbered = [(k, triggers, rx) for k, (triggers, rx) in enumerate(rules)]
        # the C scan's words, each with the bits of the built-in rules it triggers
        masks: dict[str, int] = {}
        for k, words in enumerate(BUILTIN_TRIGGERS if builtin else ()):
            for w in words:
                masks[w] = masks.get(w, 0) | 1 << k
        self._scan_words = tuple(w.encode() for w in masks)
        self._scan_masks = tuple(masks.values())
        # an upper-case PWD not after [_.-] is the working directory (sudo's PWD=/root), which the
        # key=value rule leaves alone: that occurrence of "pwd" triggers nothing
        self._scan_exceptions = tuple((i, b"PWD", b"_.-") for i, w in enumerate(self._scan_words) if w == b"pwd")
        #: whether changed_texts/changed_lines use the compiled scan (the tests turn it off to
        #: compare it with the Python scan)
        self.compiled_scan = _scan is not None and builtin and not self._custom

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
        return self._apply(text, lowered)

    def trigger_words(self) -> tuple[tuple[bytes, ...], tuple[int, ...], tuple[tuple[int, bytes, bytes], ...]] | None:
        """``(words, masks, exceptions)``: the built-in rules' trigger words (lower-case ASCII), the
        bits of the rules each belongs to, and ``(word, spelling, bytes)``: an occurrence spelled
        exactly so and not after one of the bytes triggers nothing; for a compiled prefilter: an
        ASCII text holding none of them is never changed. None when every text must be looked at
        (custom patterns)."""
        if self._custom:
            return None
        return self._scan_words, self._scan_masks, self._scan_exceptions

    def _scanned(self, texts: list[str]) -> dict[int, str]:
        """``{index: redact_text(text)}`` for the texts that redaction changes, by the C scan."""
        out: dict[int, str] = {}
        apply = self._apply
        for i, mask in _scan.scan(texts, self._scan_words, self._scan_masks, self._scan_exceptions):
            text = texts[i]
            r = apply(text, text.lower()) if mask == -1 else apply(text, None, mask)
            if r != text:
                out[i] = r
        return out

    def _apply(self, text: str, lowered: str | None, mask: int | None = None) -> str:
        """Every rule whose trigger words ``lowered`` (``text`` lower-cased) holds, on ``text``.

        With ``mask`` (bit k: rule k's trigger words are in ``text``, from the C scan) those
        checks are taken from it until a rule changes the text; the rules after that check their
        words on the changed text, as they do without a mask."""
        lower = lowered
        masked = mask is not None
        for k, triggers, rx in self._numbered:
            if triggers is not None:
                if masked:
                    if not mask >> k & 1:  # type: ignore[operator]  # masked: mask is an int
                        continue
                else:
                    if lower is None:
                        lower = text.lower()
                    if triggers.search(lower) is None:
                        continue
            if rx.search(text) is not None:
                text = rx.sub(self._sub, text)
                masked, lower = False, None
        return text

    def changed_lines(self, joined: str) -> dict[int, str]:
        """``{index: redact_text(line)}`` for the lines of ``joined`` (split on newlines, none
        inside a line) that redaction changes — the same as ``redact_text`` on each line, with
        one scan of the whole text for the common case of no secret at all."""
        if self.compiled_scan:  # (it leaves lines that are not ASCII to the Python checks)
            return self._scanned(joined.split("\n"))
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

    def changed_texts(self, texts: list[str]) -> dict[int, str]:
        """``{index: redact_text(text)}`` for the ``texts`` that redaction changes — the same as
        ``redact_text`` on each, without a Python call for the common text that holds none of the
        built-in rules' trigger words."""
        if self._custom:
            return {i: r for i, t in enumerate(texts) if (r := self.redact_text(t)) != t}
        if self.compiled_scan:
            return self._scanned(texts)
        lowered = list(map(str.lower, texts))
        apply = self._apply
        out: dict[int, str] = {}
        # the trigger scan and the loop over texts run in C; only texts with a trigger word get here
        for i in compress(range(len(texts)), map(self._any_trigger.search, lowered)):
            r = apply(texts[i], lowered[i])
            if r != texts[i]:
                out[i] = r
        return out

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
