"""Filters by a related id cannot tell another user's object from a missing one."""

from __future__ import annotations

from typing import Any

import pytest

from recotem.projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/training_data/?project={id}",
        "/api/v1/item_meta_data/?project={id}",
        "/api/v1/split_config/?project={id}",
        "/api/v1/trained_model/?project={id}",
        "/api/v1/deployment_slot/?project={id}",
        "/api/v1/retraining_schedule/?project={id}",
        "/api/v1/api_keys/?project={id}",
    ],
)
def test_it_answers_foreign_and_missing_filter_ids_alike(
    alice_client: Any, bob_client: Any, project: Project, path: str
) -> None:
    foreign = bob_client.get(path.format(id=project.pk))
    missing = bob_client.get(path.format(id=project.pk + 1000))
    assert foreign.status_code == missing.status_code == 400
    assert foreign.json() == missing.json()
    assert alice_client.get(path.format(id=project.pk)).status_code == 200


@pytest.mark.parametrize("value", ["9223372036854775808", "99999999999999999999", "-1", "x"])
def test_it_answers_out_of_range_filter_ids_with_400(alice_client: Any, value: str) -> None:
    response = alice_client.get(f"/api/v1/training_data/?project={value}")
    assert response.status_code == 400 and "project" in response.json()
