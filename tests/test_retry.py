"""The retry decision (pure) and the Retry-After parser, each tested alone."""

from __future__ import annotations

import email.utils
import time

import pytest

from agent.errors import AuthError, Rejected, RetryableShipError, TooLarge
from agent.shipping.retry import RETRY_AFTER_CAP_S, Action, SendOutcome, decide, parse_retry_after, to_error


class TestDecide:
    @pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
    def test_2xx_is_success(self, status):
        """Any 2xx means stored (duplicates included)."""
        assert decide(SendOutcome(status)).action is Action.SUCCESS

    @pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504, 599])
    def test_retryable(self, status):
        """No answer, 408, 429 and 5xx are retried."""
        assert decide(SendOutcome(status)).action is Action.RETRY

    @pytest.mark.parametrize("status", [401, 403])
    def test_auth_pauses(self, status):
        """401/403 pause shipping."""
        assert decide(SendOutcome(status)).action is Action.PAUSE

    def test_413_splits(self):
        """413 splits the batch."""
        assert decide(SendOutcome(413)).action is Action.SPLIT

    @pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 415, 422, 451, 499])
    def test_other_4xx_dead_letter(self, status):
        """Other 4xx refuse the batch itself."""
        assert decide(SendOutcome(status, "bad")).action is Action.DEAD_LETTER

    @pytest.mark.parametrize("status", [100, 301, 302, 304])
    def test_unexpected_status_retried(self, status):
        """A status this protocol does not know is retried, never dropped."""
        assert decide(SendOutcome(status)).action is Action.RETRY

    def test_retry_after_carried(self):
        """Retry-After of a 429 is parsed into the action."""
        assert decide(SendOutcome(429, retry_after="7")).retry_after == 7.0

    def test_partial_success_is_its_own_action(self):
        """A 2xx that refused part of the batch is a partial success carrying the backend's words."""
        got = decide(SendOutcome(200, "2 of 5 rejected: bad ts", rejected=2))
        assert (got.action, got.reason, got.status) == (Action.PARTIAL, "2 of 5 rejected: bad ts", 200)
        assert decide(SendOutcome(200, rejected=0)).action is Action.SUCCESS

    @pytest.mark.parametrize(("status", "retryable", "expected"), [
        (500, False, Action.DEAD_LETTER), (501, False, Action.DEAD_LETTER), (400, True, Action.RETRY),
        (503, True, Action.RETRY), (401, False, Action.PAUSE), (413, False, Action.SPLIT)])
    def test_a_protocol_may_override_retryability(self, status, retryable, expected):
        """A sink whose protocol says a status is (not) retryable says so; auth and size keep their meaning."""
        assert decide(SendOutcome(status, "x", retryable=retryable)).action is expected

    def test_errors_map_to_the_tree(self):
        """Each action maps to its exception class."""
        assert isinstance(to_error(decide(SendOutcome(503))), RetryableShipError)
        assert isinstance(to_error(decide(SendOutcome(401))), AuthError)
        assert isinstance(to_error(decide(SendOutcome(413))), TooLarge)
        assert isinstance(to_error(decide(SendOutcome(400))), Rejected)
        assert to_error(decide(SendOutcome(200))) is None


class TestRetryAfter:
    def test_seconds(self):
        """Delta-seconds."""
        assert parse_retry_after("120") == 120.0

    def test_http_date(self):
        """An HTTP date in the future gives the seconds until then."""
        now = time.time()
        value = email.utils.formatdate(now + 30, usegmt=True)
        assert 28 <= parse_retry_after(value, now=now) <= 31

    def test_past_date_is_zero(self):
        """A date in the past means now."""
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e9x", "\x00\xff", "²", "12 34", "Tue, 99 Foo"])
    def test_garbage_is_none(self, value):
        """Garbage (or nothing) gives None: no Retry-After, the backoff alone decides."""
        assert parse_retry_after(value) is None

    @pytest.mark.parametrize("value", ["9" * 400, "3601", "86400", "Fri, 01 Jan 9999 00:00:00 GMT"])
    def test_huge_is_capped_at_one_hour(self, value):
        """A huge delay (seconds or a far date) is capped at exactly one hour."""
        assert parse_retry_after(value) == RETRY_AFTER_CAP_S == 3600.0
