"""Redaction: the built-in patterns, user patterns, and which fields are touched."""

from __future__ import annotations

import pytest

from agent.pipeline.redact import Redactor

R = Redactor()


class TestRedactor:
    @pytest.mark.parametrize(
        "text,secret",
        [
            ("mysql -u root -pS3cretPW db", "S3cretPW"),
            ("mysqldump -h db -psup3r --all-databases", "sup3r"),
            ('curl -H "Authorization: Bearer eyJhbGciOi.abc-123" https://x', "eyJhbGciOi.abc-123"),
            ("login password=hunter2 ok", "hunter2"),
            ("PASSWD: 'hunter 2'", "hunter 2"),
            ("app --password hunter2 --x", "hunter2"),
            ("app --password=hunter2", "hunter2"),
            ("app --token abcdef123", "abcdef123"),
            ("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            ("aws_access_key_id AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
            ("git clone https://bob:pw123@git.example.com/r.git", "pw123"),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
        ],
    )
    def test_builtin_patterns(self, text, secret):
        """Each built-in pattern hides the secret and keeps the context."""
        out = R.redact_text(text)
        assert secret not in out
        assert "[REDACTED]" in out

    @pytest.mark.parametrize("text", ["ls -la", "mysql -p -u root", "Accepted publickey for root from 10.0.0.1", "", "x" * 100_000])
    def test_innocent_text_unchanged(self, text):
        """Lines without secrets pass through unchanged (a bare -p prompts, it holds nothing)."""
        assert R.redact_text(text) == text

    def test_user_patterns_with_and_without_group(self):
        """A user pattern with a `secret` group replaces that span; without, the whole match."""
        r = Redactor([r"pin=(?P<secret>\d+)", r"\b\d{3}-\d{2}-\d{4}\b"])
        assert r.redact_text("pin=1234 ssn 123-45-6789") == "pin=[REDACTED] ssn [REDACTED]"

    def test_builtin_can_be_disabled(self):
        """builtin=False keeps only the user's patterns."""
        assert Redactor(builtin=False).redact_text("password=x") == "password=x"

    def test_event_fields(self):
        """Free-text fields are redacted per kind; nested details too; other fields are left alone."""
        ev = {"kind": "command", "data": {"line": "mysql -pX1 db", "result": "token=abc", "operator": "password=name"}}
        R(ev)
        assert ev["data"]["line"] == "mysql -p[REDACTED] db"
        assert ev["data"]["result"] == "token=[REDACTED]"
        assert ev["data"]["operator"] == "password=name"
        ua = {"kind": "user_activity", "data": {"user": "u", "details": {"command": "/usr/bin/app --password=zz", "n": [1, "secret=q"]}}}
        R(ua)
        assert ua["data"]["details"] == {"command": "/usr/bin/app --password=[REDACTED]", "n": [1, "secret=[REDACTED]"]}

    def test_invalid_utf8_surrogates_and_huge(self):
        """Surrogate-escaped and huge strings do not break it."""
        text = "password=\udcff\udcfe " + "a" * 1_000_000
        out = R.redact_text(text)
        assert out.startswith("password=[REDACTED] ")


class TestTriggerPrefilter:
    def test_trie_matches_like_the_flat_alternation(self):
        """The factored trigger regex finds exactly what the plain alternation of the words finds."""
        import random
        import re

        from agent.pipeline.redact import BUILTIN_TRIGGERS, _trie_pattern

        words = {t for ts in BUILTIN_TRIGGERS for t in ts}
        trie = re.compile(_trie_pattern(words))
        flat = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
        rng = random.Random(3)
        alphabet = "aceiklmnoprstwyz -_:/"
        for _ in range(5000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            if rng.random() < 0.3:
                w = rng.choice(sorted(words))
                i = rng.randint(0, len(text))
                text = text[:i] + w + text[i:]
            assert bool(trie.search(text)) == bool(flat.search(text)), text
