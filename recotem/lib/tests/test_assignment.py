"""Sticky assignment: stable, salted, and weighted shares within 2 points over 10,000 users."""

from __future__ import annotations

from collections import Counter

import pytest

from recotem.lib.assignment import assign, cumulative, pick, position


def test_it_gives_each_user_the_same_slot_every_time() -> None:
    first = [assign(f"user-{i}", "salt-a", [50, 50]) for i in range(1000)]
    again = [assign(f"user-{i}", "salt-a", [50, 50]) for i in range(1000)]
    assert first == again


@pytest.mark.parametrize("weights", [[50, 50], [90, 10], [20, 30, 50], [1, 99]])
def test_it_keeps_weighted_shares_within_two_points_over_ten_thousand_users(
    weights: list[int],
) -> None:
    counts = Counter(assign(f"u{i}", "project-salt", weights) for i in range(10_000))
    total = sum(weights)
    for index, weight in enumerate(weights):
        assert abs(counts[index] / 10_000 - weight / total) <= 0.02, (index, counts)


def test_it_shuffles_differently_under_another_salt() -> None:
    a = [assign(f"u{i}", "salt-a", [50, 50]) for i in range(2000)]
    b = [assign(f"u{i}", "salt-b", [50, 50]) for i in range(2000)]
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / 2000
    assert 0.45 < agree < 0.55  # independent assignments agree about half the time


def test_it_never_picks_a_slot_of_weight_zero() -> None:
    assert {assign(f"u{i}", "s", [0, 100, 0]) for i in range(2000)} == {1}


def test_it_moves_only_the_users_in_the_range_that_changed() -> None:
    before = [assign(f"u{i}", "s", [90, 10]) for i in range(5000)]
    after = [assign(f"u{i}", "s", [80, 20]) for i in range(5000)]
    # Growing the second slot takes users from the first only: nobody leaves the second.
    assert all(a == 1 for b, a in zip(before, after, strict=True) if b == 1)


def test_it_maps_positions_into_the_unit_interval() -> None:
    values = [position(str(i), "x") for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert pick(cumulative([1, 1]), 0.0) == 0
    assert pick(cumulative([1, 1]), 0.999999) == 1


def test_it_rejects_weights_that_route_nowhere() -> None:
    with pytest.raises(ValueError):
        pick(cumulative([0, 0]), 0.5)
    with pytest.raises(ValueError):
        cumulative([-1, 2])


def test_the_highest_hash_still_lands_inside_the_last_slot() -> None:
    # A 64-bit hash divided by 2**64 rounds up to 1.0 near the top; 53 bits never do.
    from recotem.lib import assignment

    top = (2**64 - 1) >> 11
    assert top / assignment._SCALE < 1.0
    assert assignment.pick(assignment.cumulative([50, 50]), top / assignment._SCALE) == 1
