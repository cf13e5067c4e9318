"""Redaction: the built-in patterns, user patterns, and which fields are touched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
            (
                "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
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

    @pytest.mark.parametrize(
        "text", ["ls -la", "mysql -p -u root", "Accepted publickey for root from 10.0.0.1", "", "x" * 100_000]
    )
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
        ua = {
            "kind": "user_activity",
            "data": {"user": "u", "details": {"command": "/usr/bin/app --password=zz", "n": [1, "secret=q"]}},
        }
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


class TestManyTextsAtOnce:
    @pytest.mark.parametrize(
        "redactor,redacts",
        [
            (Redactor(), True),
            (Redactor(patterns=[r"seq=(?P<secret>\d+)"]), True),
            (Redactor(builtin=False), False),
            (Redactor(replacement="***"), True),
        ],
    )
    def test_changed_texts_is_redact_text_on_each(self, redactor: Redactor, redacts: bool) -> None:
        """``changed_texts`` answers exactly what ``redact_text`` gives on each text: secrets
        anywhere (first, last, after a newline inside a text), case and Unicode that change
        length when lower-cased, triggers split across two texts, and texts without any."""
        import random

        rng = random.Random(20261201)
        pieces = [
            "password=hunter2",
            "PASSWD: 'x y'",
            "--token abc",
            "Authorization: Bearer abcdefghijklmnop",
            "mysql -pS3cret",
            "https://u:pw@h/x",
            "AKIAIOSFODNN7EXAMPLE",
            "İstanbul",
            "ǅ",
            "ß",
            "\u0130pass=1",
            "pa",
            "ss=nope",
            "\n",
            "line\nsecret: s",
            "seq=42",
            "plain words",
            "",
            "é" * 30,
            "PWD=/home/a",
            "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
            "\x00\x1f",
            "☃ token: ☃",
            "to\u212aen: kelvin",  # the Kelvin sign lower-cases to k
            "PaSsWoRd=MiXeD",
            "sk_live_" + "a" * 24,
            "tok",
        ]
        texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 5))) for _ in range(2000)]
        texts += ["pa", "ss=split across texts", "tok", "en: x"]
        want = {i: r for i, t in enumerate(texts) if (r := redactor.redact_text(t)) != t}
        assert redactor.changed_texts(texts) == want
        assert bool(want) is redacts, "the corpus holds secrets"
        assert redactor.changed_texts([]) == {}


class TestSecretsInCommands:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "export DB_PASSWORD=DbSecret1 GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "export DB_PASSWORD=[REDACTED] GITHUB_TOKEN=[REDACTED]",
            ),
            ("MYSQL_PWD=hunter2 mysql -u root app", "MYSQL_PWD=[REDACTED] mysql -u root app"),
            ("PGPASSWORD='pg pass' psql -h 192.0.2.5 -U app", "PGPASSWORD=[REDACTED] psql -h 192.0.2.5 -U app"),
            ("curl -u admin:SECRET https://192.0.2.5/api", "curl -u admin:[REDACTED] https://192.0.2.5/api"),
            ("curl -s --user 'deploy:S3cr3t' https://x", "curl -s --user 'deploy:[REDACTED]' https://x"),
            ("sshpass -p SECRET ssh deploy@192.0.2.7", "sshpass -p [REDACTED] ssh deploy@192.0.2.7"),
            ("sshpass -p 'two words' ssh h", "sshpass -p [REDACTED] ssh h"),
            ("mysql -u root -p'two words' app", "mysql -u root -p[REDACTED] app"),
            (
                "git clone https://alice:Pa55@git.example.com/r.git",
                "git clone https://alice:[REDACTED]@git.example.com/r.git",
            ),
            ("redis-cli -u redis://:RedisPw@127.0.0.1:6379", "redis-cli -u redis://:[REDACTED]@127.0.0.1:6379"),
            (
                "T=github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123 x",
                "T=[REDACTED] x",
            ),
            ("notify xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx now", "notify [REDACTED] now"),
            (
                "aws configure set aws_access_key_id AKIAIOSFODNN7EXAMPLE",
                "aws configure set aws_access_key_id [REDACTED]",
            ),
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY aws s3 ls",
                "AWS_SECRET_ACCESS_KEY=[REDACTED] aws s3 ls",
            ),
            (
                "curl -H 'X-Auth: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXZhbHVl' https://x",
                "curl -H 'X-Auth: [REDACTED]' https://x",
            ),
            (
                "echo '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE "
                "KEY-----' "
                "> k",
                "echo '-----BEGIN OPENSSH PRIVATE KEY-----[REDACTED]-----END OPENSSH PRIVATE KEY-----' > k",
            ),
            ("-----BEGIN EC PRIVATE KEY----- MHcCAQEEIIrYSSNQFaA", "-----BEGIN EC PRIVATE KEY-----[REDACTED]"),
            ('{"password": "x y", "user": "bob"}', '{"password": [REDACTED], "user": "bob"}'),
            ("openssl enc -aes256 -pass pass:Secr3t -in f", "openssl enc -aes256 -pass pass:[REDACTED] -in f"),
            ("wget --http-password=hunter2 https://x", "wget --http-password=[REDACTED] https://x"),
        ],
    )
    def test_secret_is_hidden_and_the_rest_kept(self, text: str, expected: str):
        """Each form of secret a command line carries is replaced, and only it."""
        assert R.redact_text(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "alice : TTY=pts/0 ; PWD=/root ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx",
            "OLDPWD=/home/alice PWD=/srv/app make",
            "cd /tmp && pwd",
            "pam_unix(passwd:chauthtok): password changed for alice",
            "Failed password for invalid user admin from 203.0.113.9 port 22022 ssh2",
            "Accepted password for alice from 192.0.2.10 port 52144 ssh2",
            "bypass=1 compass=north max_tokens=100 password_file=/etc/app/pw",
            "psql --no-password -h db",
            "mysql -p -u root",
            "curl -u admin https://192.0.2.5/api",
            "docker run -u 1000:1000 alpine id",
            "http://example.com:8080/path?q=1",
        ],
    )
    def test_audit_data_is_not_over_redacted(self, text: str):
        """Working directories, PAM's own words, key names that merely contain a keyword, prompts
        without a value: nothing is hidden."""
        assert R.redact_text(text) == text

    def test_sudo_line_as_a_system_log_keeps_its_directory(self):
        """sudo's log line through the redaction of system logs keeps PWD=/root, like the derived row."""
        ev = {
            "kind": "system_log",
            "data": {
                "program": "sudo",
                "message": "   alice : TTY=pts/0 ; PWD=/root ; USER=root ; COMMAND=/usr/bin/env DB_PASSWORD=DbSecret1 "
                           "app",
            },
        }
        R(ev)
        assert ev["data"]["message"] == (
            "   alice : TTY=pts/0 ; PWD=/root ; USER=root ; COMMAND=/usr/bin/env DB_PASSWORD=[REDACTED] app"
        )

    def test_changed_lines_agrees_with_redact_text(self):
        """The whole-block path finds the same secrets as line by line."""
        lines = [
            "ls",
            "export GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "cd /root; PWD=/root",
            "sshpass -p X ssh h",
            "curl -u a:b https://x",
        ]
        changed = R.changed_lines("\n".join(lines))
        assert changed == {i: R.redact_text(t) for i, t in enumerate(lines) if R.redact_text(t) != t}
        assert set(changed) == {1, 3, 4}


class TestCompiledTriggerScan:
    """The C trigger scan (``_scan.c``) decides exactly as the Python scan does."""

    def test_built_in_ci(self) -> None:
        from tests.support import need

        need(Redactor().compiled_scan, "the compiled trigger scan (pip install -e . with gcc)")
        assert not Redactor(patterns=["x"]).compiled_scan and not Redactor(builtin=False).compiled_scan

    def test_the_working_directory_triggers_nothing(self) -> None:
        """sudo's ``PWD=/home/x`` (upper case, not after ``_.-``) skips the rules; every other
        spelling or place of "pwd" is still looked at, and all give what the Python scan gives."""
        from agent.pipeline import _scan

        fast, slow = Redactor(), Redactor()
        slow.compiled_scan = False
        words, masks, exceptions = fast.trigger_words()  # type: ignore[misc]
        texts = ["deploy : TTY=pts/1 ; PWD=/home/deploy ; USER=root", "PWD=/root", "OLDPWD=/tmp",
                 "MYSQL_PWD=hunter2", "x.PWD=s3cret", "a-PWD: s", "pwd=lower", "Pwd: mixed", "pWD=x",
                 "\x00PWD=x", " PWD_x=1", "PWD", "PW", "cd; PWD=/a password=b", "PWD=/a\nMYSQL_PWD=b"]
        flagged = {i for i, _ in _scan.scan(texts, words, masks, exceptions)}
        assert 0 not in flagged and 1 not in flagged and 2 not in flagged and 9 not in flagged
        assert {3, 4, 5, 6, 7, 8, 13, 14} <= flagged
        assert fast.changed_texts(texts) == slow.changed_texts(texts)
        assert fast.changed_lines("\n".join(texts)) == slow.changed_lines("\n".join(texts))
        assert "hunter2" not in fast.changed_texts(texts)[3]

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.text(alphabet=st.sampled_from(list("pasword=: -_.tokenPWDAKIAgh/@\u212a\u0130xé\n'\"\x00")) ),
                    max_size=20))
    def test_same_as_python(self, texts: list[str]) -> None:
        fast, slow = Redactor(), Redactor()
        slow.compiled_scan = False
        want = {i: r for i, t in enumerate(texts) if (r := slow.redact_text(t)) != t}
        assert fast.changed_texts(texts) == slow.changed_texts(texts) == want
        joined = "\n".join(t.replace("\n", " ") for t in texts)
        assert fast.changed_lines(joined) == slow.changed_lines(joined)


class TestTriggerWordsCoverEveryMatch:
    """Redaction's prefilter is only sound if every match of a built-in rule holds one of that
    rule's trigger words (lower-cased): then a text without them cannot be changed by it."""

    KEYS = ["password", "PASSWD", "passphrase", "private_key", "PrivateKey", "secret", "client_secret",
            "ClientSecret", "token", "GITHUB_TOKEN", "api_key", "apiKey", "API-KEY", "apikey", "access_key",
            "AccessKey", "ACCESS-KEY", "aws_access_key_id", "token2", "DB_PASSWORD", "pass",
            "my.pass", "MYSQL_PWD", "pwd", "x-pwd"]
    SHAPES = ["--password hunter2", "--api-key=k", "--access-key k", "--client-secret=s", "--x-token t",
              "mysql -pS3cret", "mariadb-dump -px", "curl -u a:b https://h", "curl --proxy-user=a:b x",
              "sshpass -p pw ssh", "Authorization: Bearer abcdefghijklmnopqrstu", "bearer abcdefghijklmnopqr",
              "AUTHORIZATION: basic Zm9v", "aws_secret_access_key=" + "A" * 40, "redis://:pw@h", "x://u:p@h",
              "AKIA" + "A" * 16, "ASIA" + "B" * 16, "ghp_" + "a" * 36, "github_pat_" + "b" * 22,
              "glpat-" + "c" * 20, "xoxb-1234567890", "hooks.slack.com/services/T1/B2/x", "sk_live_" + "d" * 24,
              "npm_" + "e" * 36, "pypi-AgEIcHlwaS5vcmc" + "f" * 50, "AIza" + "g" * 35,
              "sk-proj-" + "h" * 20 + "T3BlbkFJ" + "i" * 20, "eyJabcde.eyJfghij.sig",
              "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY----- y"]

    def corpus(self) -> list[str]:
        texts = [f"{k}{sep}{v}" for k in self.KEYS for sep in ("=", ": ", "\"=", "' : ")
                 for v in ("hunter2", "'two words'", '"q"')]
        return texts + self.SHAPES + [f"pre {s} post" for s in self.SHAPES]

    def test_every_match_holds_a_trigger_word(self) -> None:
        import re

        from agent.pipeline.redact import BUILTIN_PATTERNS, BUILTIN_TRIGGERS

        matched = 0
        for pattern, words in zip(BUILTIN_PATTERNS, BUILTIN_TRIGGERS, strict=True):
            rx = re.compile(pattern)
            # upper-cased too: most rules ignore case, and their words must still be found
            for text in self.corpus() + [t.upper() for t in self.corpus()]:
                for m in rx.finditer(text):
                    matched += 1
                    assert any(w in m.group(0).lower() for w in words), (pattern[:40], text, m.group(0))
        assert matched > 150

    def test_the_corpus_is_redacted(self) -> None:
        """Each text of the corpus holds a secret the redaction finds (so the check above bites)."""
        missed = [t for t in self.corpus() if R.redact_text(t) == t]
        assert not missed, missed
