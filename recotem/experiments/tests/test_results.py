"""Experiment results from real event rows: per-user counting, always-valid statistics, SRM."""

from __future__ import annotations

from typing import Any

import pytest

from recotem.experiments.models import Experiment
from recotem.experiments.services import experiment_create, experiment_results, experiment_start
from recotem.experiments.tests.conftest import add_events
from recotem.lib import abtest
from recotem.projects.models import Project


@pytest.fixture
def running(project: Project, slots: Any) -> Experiment:
    experiment = experiment_create(
        project=project, name="e", control_slot=slots[0], variant_slot=slots[1]
    )
    return experiment_start(experiment)


def test_it_counts_distinct_users_not_events(running: Experiment) -> None:
    add_events(running.pk, "control", "impression", [1, 1, 1, 2, 3, 4])
    add_events(running.pk, "control", "click", [1, 1, 1, 1, 2])  # 2 converted users, 5 clicks
    add_events(running.pk, "control", "click", [99])  # clicked without an impression: not counted
    add_events(running.pk, "variant", "impression", [5, 6])
    add_events(running.pk, "variant", "purchase", [5])  # another event type: not the metric
    result = experiment_results(running)
    control, variant = result.arms
    assert (control.slot, control.users, control.converted) == (running.control_slot_id, 4, 2)
    assert control.rate == 0.5
    assert (variant.users, variant.converted, variant.rate) == (2, 0, 0.0)
    assert 0.0 <= control.rate <= 1.0


def test_it_ignores_events_of_other_experiments_and_unattributed_ones(
    project: Project, slots: Any, running: Experiment
) -> None:
    other = experiment_create(
        project=project, name="o", control_slot=slots[0], variant_slot=slots[1]
    )
    add_events(other.pk, "control", "impression", range(50))
    add_events(running.pk, "control", "impression", range(10))
    assert experiment_results(running).arms[0].users == 10


def test_it_reports_the_always_valid_statistics_of_the_counts(running: Experiment) -> None:
    add_events(running.pk, "control", "impression", range(1000))
    add_events(running.pk, "control", "click", range(100))
    add_events(running.pk, "variant", "impression", range(1000, 2000))
    add_events(running.pk, "variant", "click", range(1000, 1160))
    result = experiment_results(running)
    expected = abtest.results(1000, 100, 1000, 160, alpha=0.05)
    assert result.lift == pytest.approx(0.6)
    assert result.ci_low == pytest.approx(expected.ci_low) and result.ci_low > 0
    assert result.ci_high == pytest.approx(expected.ci_high)
    assert result.p_value == pytest.approx(expected.p_value) and result.p_value < 0.05
    assert result.decision == "variant_better"
    assert result.srm_p_value == pytest.approx(1.0) and result.warnings == []
    assert result.updated_at is not None
    body = result.as_dict()
    assert {"arms", "lift", "ci_low", "ci_high", "p_value", "decision", "srm_p_value"} <= set(body)


def test_it_warns_about_a_sample_ratio_mismatch(running: Experiment) -> None:
    add_events(running.pk, "control", "impression", range(1000))
    add_events(running.pk, "variant", "impression", range(1000, 1800))
    result = experiment_results(running)
    assert result.srm_p_value < abtest.SRM_WARN_BELOW
    assert result.warnings and "Sample-ratio mismatch" in result.warnings[0]


def test_it_says_continue_without_data(running: Experiment) -> None:
    result = experiment_results(running)
    assert result.decision == "continue" and result.p_value == 1.0
    assert [a.users for a in result.arms] == [0, 0] and result.lift is None


def test_users_shown_items_by_both_arms_count_in_neither_and_are_reported(
    running: Experiment,
) -> None:
    add_events(running.pk, "control", "impression", range(10))
    add_events(running.pk, "control", "click", [0, 1])
    add_events(running.pk, "variant", "impression", range(8, 20))  # users 8 and 9 crossed over
    add_events(running.pk, "variant", "click", [9, 10])
    result = experiment_results(running)
    control, variant = result.arms
    assert (control.users, control.converted) == (8, 2)
    assert (variant.users, variant.converted) == (10, 1)
    assert any("2 users were shown items by both arms" in w for w in result.warnings)
