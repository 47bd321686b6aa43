"""The job-wide TPM/RPM budget: token buckets, provider headers, and one budget for all tasks."""

from __future__ import annotations

import pytest

from persona_spark.labeling.ratelimit import SharedBudget, header_limits, parse_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reservations_beyond_the_minute_wait_in_order():
    clock = Clock()
    budget = SharedBudget(tokens_per_minute=600, requests_per_minute=0, clock=clock)
    assert budget.reserve(500) == 0  # the bucket starts full, as the provider's does
    assert budget.reserve(200) == pytest.approx(10.0)  # 100 tokens short at 10 tokens/s
    assert budget.reserve(100) == pytest.approx(20.0)  # queued behind the previous one
    clock.now = 30.0  # 300 tokens refilled: the debt of 200 is repaid, 100 left
    assert budget.reserve(100) == 0
    assert budget.reserve(100) == pytest.approx(10.0)


def test_requests_per_minute_bound_as_well():
    clock = Clock()
    budget = SharedBudget(tokens_per_minute=0, requests_per_minute=2, clock=clock)
    assert [budget.reserve(10**6) for _ in range(3)] == [0, 0, pytest.approx(30.0)]


def test_provider_headers_only_lower_the_budget():
    clock = Clock()
    budget = SharedBudget(tokens_per_minute=6000, requests_per_minute=0, clock=clock)
    budget.observe(header_limits({"x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "59s"}))
    assert budget.reserve(700) == pytest.approx(6.0)  # 600 short at 100 tokens/s
    budget.observe({"remaining_tokens": 10**9})
    assert budget.tokens.level < 0  # a higher remaining never raises it


def test_an_unconfigured_budget_adopts_the_provider_limit():
    budget = SharedBudget(0, 0, clock=Clock())
    budget.observe(header_limits({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0"}))
    assert budget.reserve(1) == pytest.approx(1.0)


def test_reset_durations():
    assert parse_duration("6m0s") == 360 and parse_duration("1.5s") == 1.5 and parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("2") == 2 and parse_duration(None) is None and parse_duration("soon") is None
