import logging
import math
import random
from collections import defaultdict

import httpx
import pytest
import tenacity
from fakes import FakeClock

from connector.errors import FatalCrmError, RetryableCrmError
from connector.http import (
    BATCH,
    Pacer,
    PacerLimits,
    RetryPolicy,
    make_http_client,
    quiet_http_loggers,
    redact,
)

T0 = 1_800_000_000.0  # a multiple of 60: bucket edges fall on whole minutes


def paced(limits: PacerLimits | None = None) -> tuple[Pacer, FakeClock]:
    clock = FakeClock(T0 + 17.0)  # off the minute: bucket edges are not at the start
    pacer = Pacer(limits or PacerLimits(), clock=clock, wall_clock=clock, sleep=clock.sleep)
    return pacer, clock


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("POST https://p.bitrix24.ru/rest/1/abcdef123/crm.deal.list", "abcdef123"),
        ("https://p.bitrix24.ru/rest/api/7/v3secret99/crm.item.list", "v3secret99"),
        ("https%3A%2F%2Fp.ru%2Frest%2F1%2Fencsecret1%2Fprofile", "encsecret1"),
        ("https://p.bitrix24.ru/rest/crm.deal.list?auth=tok123456&x=1", "tok123456"),
        ("grant_type=refresh_token&refresh_token=ref123456&client_secret=cs987654", "ref123456"),
        ("grant_type=refresh_token&refresh_token=ref123456&client_secret=cs987654", "cs987654"),
        ('{"access_token": "tok987654", "refresh_token": "ref123456"}', "tok987654"),
        ("auth[access_token]=formtok77&auth[domain]=p.ru", "formtok77"),
        ("auth%5Baccess_token%5D=enctok77", "enctok77"),
        ("/oauth/token/?grant_type=authorization_code&code=authcode55", "authcode55"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "eyJhbGciOi"),
    ],
)
def test_redact_hides_credentials(text, secret):
    assert secret not in redact(text)
    assert "***" in redact(text)


def test_redact_hides_explicit_secrets_anywhere_but_leaves_plain_text():
    assert redact("oops s3cr3tvalue leaked", ["s3cr3tvalue"]) == "oops *** leaked"
    plain = "crm.deal.list: HTTP 401 expired_token: The access token provided has expired."
    assert redact(plain) == plain, "codes and prose are not credentials"
    assert redact("x a y", ["a"]) == "x a y", "a one-letter 'secret' would shred the text"


# -- HTTP client factory ------------------------------------------------------------------------


def test_http_client_is_explicit_and_does_not_follow_redirects():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "https://new.bitrix24.ru/rest/1/s/x"})

    with make_http_client(timeout_s=30, transport=httpx.MockTransport(handler)) as client:
        response = client.post("https://old.bitrix24.ru/rest/1/s/x", json={"a": 1})
        assert response.status_code == 302 and len(seen) == 1
        assert client.follow_redirects is False
        assert client.timeout.read == 30 and client.timeout.connect is not None
        assert seen[0].headers["user-agent"].startswith("crm-retention/")


def test_quiet_http_loggers():
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    quiet_http_loggers()
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.WARNING


# -- leaky bucket ------------------------------------------------------------------------------


def bucket_peak(moments: list[float], drain: float) -> float:
    """The portal's model: +1 per request, draining at ``drain`` per second."""
    level, last, peak = 0.0, moments[0], 0.0
    for moment in moments:
        level = max(0.0, level - (moment - last) * drain) + 1
        last, peak = moment, max(peak, level)
    return peak


def test_bucket_is_never_exceeded_under_a_burst():
    pacer, clock = paced(PacerLimits(bucket_size=50, drain_per_s=2.0))
    sent: list[float] = []
    for _ in range(200):
        pacer.before_request({"crm.deal.list": 1})
        sent.append(clock.now)
    assert bucket_peak(sent, 2.0) <= 49
    assert sent[48] == sent[0], "the first 49 go at once: the bucket allows a burst"
    # and no slower than needed: after the burst, exactly the drain rate
    assert clock.now - sent[0] == pytest.approx((200 - 49) / 2.0)
    assert pacer.stats.waits == 200 - 49


def test_bucket_with_irregular_gaps_and_work_between_requests():
    pacer, clock = paced(PacerLimits(bucket_size=10, drain_per_s=5.0))
    rng = random.Random(3)
    sent: list[float] = []
    for _ in range(300):
        pacer.before_request({"profile": 1})
        sent.append(clock.now)
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.3, 1.5])
    assert bucket_peak(sent, 5.0) <= 9 + 1e-6  # float noise at 1.8e9 s


# -- operating budget: a simulated server -------------------------------------------------------


class Server:
    """The per-method time budget as the facts sheet (§5.2) describes it.

    Server seconds per key in ten one-minute buckets; a call is refused (429) when the
    key's sum already exceeds the budget; the call that crosses it completes.
    ``accounting`` is "nested" (current docs) or "batch" (jssdk's measurement).
    """

    def __init__(self, accounting: str = "nested", *, silent: bool = False,
                 budget: float = 480.0, window: float = 600.0) -> None:
        self.accounting, self.silent, self.budget = accounting, silent, budget
        self.length, self.buckets = window / 10, 10
        self.spent: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.refused = 0
        self.peak = 0.0
        self.work = 0.0

    def operating(self, key: str, now: float) -> float:
        current = math.floor(now / self.length)
        return sum(v for i, v in self.spent[key].items() if i > current - self.buckets)

    def reset_at(self, key: str, now: float) -> int:
        current = math.floor(now / self.length)
        live = [i for i, v in self.spent[key].items() if i > current - self.buckets and v]
        return math.ceil((min(live or [current]) + self.buckets) * self.length)

    def keys(self, methods: dict[str, int]) -> list[str]:
        nested = [m for m in methods if m != BATCH]
        if BATCH in methods and self.accounting == "batch":
            return [BATCH]
        return nested

    def serve(self, pacer: Pacer, clock: FakeClock, methods: dict[str, int], cost: float) -> None:
        """One request: the pacer decides when; the server checks, works and answers."""
        pacer.before_request(methods)
        keys = self.keys(methods)
        if any(self.operating(k, clock.now) > self.budget for k in keys):
            self.refused += 1
            return
        clock.now += cost
        self.work += cost
        for key in keys:
            self.spent[key][math.floor(clock.now / self.length)] += cost
            self.peak = max(self.peak, self.operating(key, clock.now))
        info, extra = self.answer(methods, clock.now, cost)
        pacer.after_response(methods, info, cost, **extra)

    def answer(self, methods: dict[str, int], now: float, cost: float):
        nested = next(m for m in methods if m != BATCH)
        outer_key = BATCH if BATCH in methods else nested
        info = {"processing": cost if outer_key in self.keys(methods) else 0.0,
                "duration": cost}
        operating = None
        if not self.silent:
            info |= {"operating": self.operating(outer_key, now),
                     "operating_reset_at": self.reset_at(outer_key, now)}
            operating = {nested: self.operating(nested, now)} if BATCH in methods else None
        costs = {nested: cost} if BATCH in methods else None
        return info, {"costs": costs, "operating": operating}


def drive(server, pacer, clock, plan):
    started = clock.now
    for methods, cost in plan:
        server.serve(pacer, clock, methods, cost)
    return server.work / (clock.now - started)


def batches(method: str, n: int, cost: float, jitter: float = 0.0, seed: int = 1):
    rng = random.Random(seed)
    return [({method: 50, BATCH: 1}, cost * (1 + rng.uniform(-jitter, jitter)))
            for _ in range(n)]


@pytest.mark.parametrize("jitter", [0.0, 0.4])
def test_budget_is_respected_and_used_with_nested_accounting(jitter):
    server = Server("nested")
    pacer, clock = paced()
    duty = drive(server, pacer, clock, batches("crm.deal.list", 400, 12.5, jitter))
    assert server.refused == 0, "no 429"
    assert server.peak <= 480, "total charged within any window stays within the budget"
    # the ceiling is 480 s of work per 600 s window: 80 % duty
    assert 0.9 * 0.8 <= duty <= 0.8 * 1.05


def test_two_methods_under_nested_accounting_are_not_throttled_together():
    server = Server("nested")
    pacer, clock = paced()
    plan = [item for pair in zip(batches("crm.contact.list", 200, 12.5),
                                 batches("crm.deal.list", 200, 12.5), strict=True)
            for item in pair]
    duty = drive(server, pacer, clock, plan)
    assert server.refused == 0 and server.peak <= 480
    assert duty > 0.95, "each method has its own budget: together they never wait"


def test_two_methods_under_batch_accounting_share_the_batch_budget():
    server = Server("batch")
    pacer, clock = paced()
    plan = [item for pair in zip(batches("crm.contact.list", 200, 12.5),
                                 batches("crm.deal.list", 200, 12.5), strict=True)
            for item in pair]
    duty = drive(server, pacer, clock, plan)
    assert server.refused == 0 and server.peak <= 480
    assert 0.9 * 0.8 <= duty <= 0.8 * 1.05


@pytest.mark.parametrize("accounting", ["nested", "batch"])
def test_a_silent_server_is_paced_on_our_own_figures(accounting):
    server = Server(accounting, silent=True)
    pacer, clock = paced()
    plan = [item for pair in zip(batches("crm.contact.list", 100, 12.5),
                                 batches("crm.deal.list", 100, 12.5), strict=True)
            for item in pair]
    drive(server, pacer, clock, plan)
    assert server.refused == 0 and server.peak <= 480


def test_crossing_allowed_still_never_draws_a_429():
    server = Server("nested")
    pacer, clock = paced(PacerLimits(allow_crossing=True))
    duty = drive(server, pacer, clock, batches("crm.deal.list", 300, 12.5, 0.3))
    assert server.refused == 0 and duty >= 0.9 * 0.8
    assert server.peak <= 480 + 12.5 * 1.3, "only the crossing call goes over"


def test_someone_else_spending_the_budget_is_learned_from_operating():
    server = Server("nested")
    pacer, clock = paced()
    # another process on the same webhook already spent 400 s of crm.deal.list
    server.spent["crm.deal.list"][math.floor(clock.now / 60)] += 400
    drive(server, pacer, clock, batches("crm.deal.list", 100, 12.5))
    assert server.refused == 0


def test_single_calls_are_charged_and_calibrated():
    pacer, _ = paced()
    pacer.after_response({"crm.deal.list": 1}, {"processing": 0.25, "operating": 3.0,
                                                "operating_reset_at": T0 + 600}, 0.3)
    assert pacer.operating("crm.deal.list") == pytest.approx(3.0), "the larger figure wins"
    pacer.after_response({"crm.deal.list": 1}, {"processing": 0.25, "operating": 1.0}, 0.3)
    assert pacer.operating("crm.deal.list") == pytest.approx(3.25)
    assert pacer.expected_cost("crm.deal.list", 4) == pytest.approx(1.0)
    assert pacer.operating("crm.contact.list") == 0


@pytest.mark.parametrize("info", [None, {}, {"operating": "n/a", "processing": None},
                                  {"processing": True, "duration": "0.5"}, [1, 2]])
def test_time_blocks_are_parsed_defensively(info):
    pacer, _ = paced()
    pacer.after_response({"profile": 1}, info, 0.75)
    assert 0 < pacer.operating("profile") <= 0.75


def test_charges_drop_out_with_their_server_bucket():
    pacer, clock = paced()
    clock.now = T0 + 30  # mid-bucket
    pacer.after_response({"m": 1}, {"processing": 100, "operating_reset_at": T0 + 600}, 100)
    clock.now = T0 + 599.9
    assert pacer.operating("m") == 100
    clock.now = T0 + 600  # the bucket [T0, T0+60) leaves the window at T0+600
    assert pacer.operating("m") == 0


def test_a_full_budget_waits_only_until_enough_drops_out():
    pacer, clock = paced()
    for minute in range(10):
        clock.now = T0 + 60 * minute + 1
        pacer.after_response({"m": 50}, {"processing": 47.5, "operating_reset_at": T0 + 600},
                             47.5)
    clock.now = T0 + 590
    waited = pacer.before_request({"m": 50})
    assert waited == pytest.approx(10.0), "the oldest bucket frees 47.5 s at T0+600"


def test_blocked_method_waits_until_reset_at():
    pacer, clock = paced()
    pacer.blocked_until("crm.deal.list", clock.now + 42)
    assert pacer.before_request({"crm.deal.list": 1}) == pytest.approx(42)
    assert pacer.before_request({"crm.contact.list": 1}) == 0, "other methods keep working"
    assert pacer.stats.waits == 1 and pacer.stats.waited_s == pytest.approx(42)


def test_next_bucket_reset():
    pacer, _ = paced()
    assert pacer.next_bucket_reset(T0 + 10) == T0 + 70, "no phase known: a whole bucket"
    pacer.after_response({"m": 1}, {"processing": 1, "operating_reset_at": T0 + 615}, 1)
    assert pacer.next_bucket_reset(T0 + 10) == T0 + 15
    assert pacer.next_bucket_reset(T0 + 15) == T0 + 75


def test_a_call_costlier_than_the_budget_still_runs_in_an_empty_window():
    pacer, _ = paced(PacerLimits(operating_budget_s=10, safety_margin_s=1))
    pacer.after_response({"m": 1}, {"processing": 30}, 30)
    waited = pacer.before_request({"m": 1})
    assert waited == pytest.approx(600), "waits for its own cost to leave, then goes"


def test_scaled_limits():
    scaled = PacerLimits().scaled(0.01)
    assert scaled.drain_per_s == pytest.approx(200)
    assert scaled.operating_budget_s == pytest.approx(4.8)
    assert scaled.operating_window_s == pytest.approx(6.0)
    assert scaled.safety_margin_s == pytest.approx(0.05)
    assert scaled.bucket_size == 50 and scaled.operating_buckets == 10


# -- retry policy -----------------------------------------------------------------------------


def flaky(failures: list[Exception], result: str = "ok"):
    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return result
    return attempt


def test_retry_policy_retries_only_retryable_and_honours_retry_after():
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=5)
    attempt = flaky([RetryableCrmError("busy", retry_after=7.0)] * 2)
    assert policy.retrying(sleep=slept.append)(attempt) == "ok"
    assert slept == [7.0, 7.0]
    with pytest.raises(FatalCrmError):
        policy.retrying(sleep=slept.append)(flaky([FatalCrmError("no")]))
    assert len(slept) == 2


def test_a_long_reset_wait_exceeds_max_delay_but_not_the_deadline():
    slept: list[float] = []
    policy = RetryPolicy(max_delay_s=120, deadline_s=900)
    policy.retrying(sleep=slept.append)(flaky([RetryableCrmError("429", retry_after=540)]))
    assert slept == [540]
    with pytest.raises(RetryableCrmError):
        policy.retrying(sleep=slept.append)(flaky([RetryableCrmError("429", retry_after=5000)]))
    assert slept == [540], "a wait past the deadline gives up instead of sleeping"


def test_backoff_is_exponential_with_jitter_and_capped():
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=9, base_delay_s=1, max_delay_s=10, deadline_s=10_000)
    with pytest.raises(RetryableCrmError):
        policy.retrying(sleep=slept.append)(flaky([RetryableCrmError("down")] * 20))
    assert len(slept) == 8
    for attempt, delay in enumerate(slept, start=1):
        ceiling = min(10, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling


def test_retrying_stops_at_the_deadline():
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=100, deadline_s=100)
    with pytest.raises(RetryableCrmError):
        policy.retrying(sleep=slept.append)(flaky([RetryableCrmError("x", retry_after=30)] * 99))
    assert slept == [30, 30, 30]


def test_retry_logs_one_redacted_warning_and_calls_the_hook(caplog):
    caplog.set_level(logging.DEBUG)
    states: list[tenacity.RetryCallState] = []
    attempt = flaky([RetryableCrmError("POST https://p.ru/rest/1/zzsecretzz/x failed")])
    RetryPolicy().retrying(sleep=lambda s: None, before_sleep=states.append)(attempt)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retry 1/8" in warnings[0].getMessage()
    assert "zzsecretzz" not in caplog.text
    assert len(states) == 1 and states[0].upcoming_sleep > 0
    assert isinstance(RetryPolicy().retrying(), tenacity.Retrying)
