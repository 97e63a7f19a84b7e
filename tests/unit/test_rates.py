"""kq.ops.rates in-process: records/s over a sliding window, time to catch up, a lag's history."""

from __future__ import annotations

import math

from kq.ops.rates import History, RateWindow, catch_up_seconds


def test_a_rate_is_the_increase_over_the_window_and_unknown_before_two_samples():
    window = RateWindow(span=10)
    window.add(0.0, {"orders": 100})
    assert window.rate("orders") is None
    window.add(1.0, {"orders": 150})
    window.add(2.0, {"orders": 250})
    assert window.rate("orders") == 75.0  # 150 records in 2 s
    assert window.rate("missing") is None


def test_the_window_slides_so_an_old_burst_stops_counting():
    window = RateWindow(span=3)
    window.add(0.0, {"t": 0})
    window.add(1.0, {"t": 1000})  # a burst
    for second in range(2, 8):
        window.add(float(second), {"t": 1000 + 10 * (second - 1)})
    assert window.rate("t") == 10.0


def test_a_counter_that_goes_down_is_a_fresh_start_not_a_negative_rate():
    window = RateWindow(span=10)
    window.add(0.0, {"g": 500})
    window.add(1.0, {"g": 0})  # offsets reset to the beginning
    window.add(2.0, {"g": 40})
    assert window.rate("g") == 20.0


def test_a_key_that_disappears_is_forgotten():
    window = RateWindow(span=10)
    window.add(0.0, {"a": 1, "b": 1})
    window.add(1.0, {"a": 2})
    window.add(2.0, {"a": 3, "b": 100})  # b came back: a new topic of the same name, say
    assert window.rate("b") is None
    assert window.rate("a") == 1.0


def test_time_to_catch_up_at_the_current_rates():
    assert catch_up_seconds(0, None, None) == 0.0
    assert catch_up_seconds(1000, 10.0, None) is None
    assert catch_up_seconds(1000, 10.0, 60.0) == 20.0
    assert catch_up_seconds(1000, 50.0, 50.0) == math.inf
    assert catch_up_seconds(1000, None, 100.0) == 10.0


def test_history_keeps_each_slice_largest_value_over_its_span():
    history = History(span=10, slices=5)  # slices of 2 s
    for second in range(20):
        history.add(float(second), {"g": second % 7})
    # seconds 10-11: 3, 4; 12-13: 5, 6; 14-15: 0, 1; 16-17: 2, 3; 18-19: 4, 5
    assert history.buckets("g", 19.0) == [4, 6, 1, 3, 5]
    assert history.buckets("g", 23.0) == [1, 3, 5, None, None]  # no sample since 19 s
    assert history.buckets("nobody", 19.0) == [None] * 5
    history.add(20.0, {})
    assert history.buckets("g", 20.0) == [None] * 5  # forgotten


def test_counters_given_only_when_they_change_have_the_rates_and_history_of_ones_given_every_time():
    import random

    chance = random.Random(24)
    every, changes = RateWindow(span=5), RateWindow(span=5)
    every_history, changes_history = History(span=8, slices=4), History(span=8, slices=4)
    values: dict[str, int] = {}
    at = 0.0
    for _ in range(200):
        at += chance.choice([0.5, 1.0, 1.0, 3.0])
        changed = {}
        for key in "abc":
            roll = chance.random()
            if key in values and roll < 0.05:
                del values[key]  # gone: forgotten by both
            elif key not in values and roll < 0.5 or key in values and roll < 0.3:
                values[key] = changed[key] = max(0, values.get(key, 0) + chance.randint(-2, 9))
        gone = [key for key in "abc" if key not in values]
        every.add(at, dict(values))
        every_history.add(at, dict(values))
        for window in (changes, changes_history):
            window.tick(at)
            window.forget(gone)
            window.update(at, changed)
        for key in "abc":
            given, kept = every.rate(key), changes.rate(key)
            assert given == kept or (given is not None and kept is not None and abs(given - kept) < 1e-9)
            assert every_history.buckets(key, at) == changes_history.buckets(key, at)
