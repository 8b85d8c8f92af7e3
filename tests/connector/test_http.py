import logging

import pytest
import tenacity

from connector.errors import FatalCrmError, RetryableCrmError
from connector.http import Pacer, PacerLimits, RetryPolicy, make_http_client, redact


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("POST https://p.bitrix24.ru/rest/1/abcdef123/crm.deal.list", "abcdef123"),
        ("https://p.bitrix24.ru/rest/crm.deal.list?auth=tok123456&x=1", "tok123456"),
        ('{"access_token": "tok987654", "refresh_token": "ref123456"}', "tok987654"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "eyJhbGciOi"),
    ],
)
def test_redact_hides_credentials(text, secret):
    assert secret not in redact(text)


def test_redact_hides_explicit_secrets_anywhere():
    assert "s3cr3tvalue" not in redact("oops s3cr3tvalue leaked", ["s3cr3tvalue"])


def test_http_client_does_not_follow_redirects_and_quiets_httpx():
    client = make_http_client(timeout_s=5)
    assert client.follow_redirects is False
    assert logging.getLogger("httpx").level >= logging.WARNING
    client.close()


def test_bucket_is_never_exceeded_under_a_burst():
    clock = Clock()
    limits = PacerLimits(bucket_size=50, drain_per_s=2.0)
    pacer = Pacer(limits, clock=clock, wall_clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    for _ in range(200):
        pacer.before_request({"crm.deal.list": 1})
        sent.append(clock.now)
    # server-side model: level +1 per request, drains 2/s, must stay <= 50
    level, last = 0.0, sent[0]
    for moment in sent:
        level = max(0.0, level - (moment - last) * 2.0) + 1
        last = moment
        assert level <= 50
    assert clock.now - sent[0] >= (200 - 50) / 2.0 - 1


def test_time_budget_is_respected_in_every_window():
    clock = Clock()
    limits = PacerLimits(operating_budget_s=480, operating_window_s=600, safety_margin_s=5)
    pacer = Pacer(limits, clock=clock, wall_clock=clock, sleep=clock.sleep)
    charges: list[tuple[float, float]] = []
    for _ in range(120):  # 120 calls x 12.5 s = 1,500 s of server time
        pacer.before_request({"crm.deal.list": 50})
        start = clock.now
        clock.now += 12.5  # the call itself takes its server time
        charges.append((clock.now, 12.5))
        pacer.after_response({"crm.deal.list": 50}, {"processing": 12.5}, 12.5)
        assert start >= 0
    for end, _ in charges:
        window = sum(c for t, c in charges if end - 600 < t <= end)
        assert window <= 480
    # and it is not needlessly slow: the steady state is 480 s of work per 600 s
    elapsed = clock.now - (charges[0][0] - 12.5)
    assert 1_500 / elapsed > 0.72


def test_blocked_method_waits_until_reset_at():
    clock = Clock()
    pacer = Pacer(PacerLimits(), clock=clock, wall_clock=clock, sleep=clock.sleep)
    pacer.blocked_until("crm.deal.list", clock.now + 42)
    waited = pacer.before_request({"crm.deal.list": 1})
    assert waited == pytest.approx(42)
    assert pacer.before_request({"crm.contact.list": 1}) == 0  # other methods keep working


def test_scaled_limits():
    scaled = PacerLimits().scaled(0.01)
    assert scaled.drain_per_s == pytest.approx(200)
    assert scaled.operating_budget_s == pytest.approx(4.8)
    assert scaled.operating_window_s == pytest.approx(6.0)


def test_retry_policy_retries_only_retryable_and_honours_retry_after():
    slept: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RetryableCrmError("busy", retry_after=7.0)
        return "ok"

    policy = RetryPolicy(max_attempts=5)
    assert policy.retrying(sleep=slept.append)(flaky) == "ok"
    assert slept == [7.0, 7.0]

    def fatal() -> None:
        raise FatalCrmError("no")

    with pytest.raises(FatalCrmError):
        policy.retrying(sleep=slept.append)(fatal)
    assert len(slept) == 2


def test_retry_policy_gives_up_and_reraises():
    slept: list[float] = []

    def always() -> None:
        raise RetryableCrmError("down")

    with pytest.raises(RetryableCrmError):
        RetryPolicy(max_attempts=3, max_delay_s=1).retrying(sleep=slept.append)(always)
    assert len(slept) == 2 and all(0 <= s <= 1 for s in slept)


def test_retry_logs_one_redacted_warning(caplog):
    caplog.set_level(logging.DEBUG)

    def once() -> None:
        if not caplog.records:
            raise RetryableCrmError("GET https://p.ru/rest/1/zzsecretzz/x failed")

    RetryPolicy().retrying(sleep=lambda s: None)(once)
    assert "zzsecretzz" not in caplog.text and "retry 1/8" in caplog.text
    assert isinstance(RetryPolicy().retrying(), tenacity.Retrying)
