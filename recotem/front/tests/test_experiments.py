"""The Experiments page: create, start, results with the arm table and plot, SRM warning,
promote, stop — through the HTML forms, with real slots and stored events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.test import Client

from recotem.core.jobs import db_now
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create
from recotem.experiments.models import Event, Experiment
from recotem.projects.models import Project


def _slots(project: Project, trained: Any) -> tuple[DeploymentSlot, DeploymentSlot]:
    a = slot_create(project=project, name="toppop", trained_model=trained, weight=50)
    b = slot_create(project=project, name="ials", trained_model=trained, weight=50)
    return a, b


def _events(
    experiment: Experiment, arm: str, slot: DeploymentSlot, users: int, every: int, day: int
) -> None:
    at = db_now() - timedelta(days=day)
    rows = []
    for n in range(users):
        common = {
            "project_id": experiment.project_id,
            "user_id": f"{arm}-{day}-{n}",
            "item_id": "1",
            "slot_id": slot.pk,
            "experiment_id": experiment.pk,
            "arm": arm,
            "timestamp": at,
        }
        rows.append(Event(event_type="impression", **common))
        if n % every == 0:
            rows.append(Event(event_type="click", **common))
    Event.objects.bulk_create(rows)


def test_it_creates_starts_shows_results_and_promotes(
    web: Client, project: Project, trained: Any
) -> None:
    control, variant = _slots(project, trained)
    page = web.get(f"/projects/{project.pk}/experiments/").content.decode()
    assert "No experiments yet" in page and 'id="experiment-form"' in page

    bad = web.post(
        f"/projects/{project.pk}/experiments/",
        {
            "new-name": "x",
            "new-control_slot": control.pk,
            "new-variant_slot": control.pk,
            "new-metric": "click",
            "new-alpha": "0.05",
        },
    )
    assert bad.status_code == 400 and "two different slots" in bad.content.decode()

    response = web.post(
        f"/projects/{project.pk}/experiments/",
        {
            "new-name": "toppop vs ials",
            "new-control_slot": control.pk,
            "new-variant_slot": variant.pk,
            "new-metric": "click",
            "new-alpha": "0.05",
        },
    )
    experiment = Experiment.objects.get(project=project)
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/experiments/{experiment.pk}/"
    detail = web.get(response["Location"]).content.decode()
    assert "Not started" in detail and ">Start<" in detail

    web.post(f"/projects/{project.pk}/experiments/{experiment.pk}/start/")
    experiment.refresh_from_db()
    assert experiment.status == "RUNNING"
    for day in (2, 1, 0):
        _events(experiment, "control", control, users=400, every=10, day=day)
        _events(experiment, "variant", variant, users=400, every=4, day=day)
    detail = web.get(f"/projects/{project.pk}/experiments/{experiment.pk}/").content.decode()
    arms = detail[detail.index('id="arms-table"') :]
    arms = arms[: arms.index("</table>")]
    assert "<td>control</td><td>toppop</td>" in arms and ">1200<" in arms
    assert ">120<" in arms and ">300<" in arms  # converted users per arm
    assert "Decision: <strong>variant_better</strong>" in detail
    assert 'id="lift-chart"' in detail and "srm-warning" not in detail

    response = web.post(
        f"/projects/{project.pk}/experiments/{experiment.pk}/promote/", {"slot": ""}
    )
    assert response.status_code == 302
    experiment.refresh_from_db()
    control.refresh_from_db()
    variant.refresh_from_db()
    assert experiment.status == "STOPPED" and experiment.promoted_slot_id == variant.pk
    assert (variant.weight, variant.is_active, control.is_active) == (100, True, False)
    listing = web.get(f"/projects/{project.pk}/experiments/").content.decode()
    assert "toppop vs ials" in listing and "variant_better" in listing


def test_it_warns_of_a_sample_ratio_mismatch_and_stops(
    web: Client, project: Project, trained: Any
) -> None:
    control, variant = _slots(project, trained)
    web.post(
        f"/projects/{project.pk}/experiments/",
        {
            "new-name": "srm",
            "new-control_slot": control.pk,
            "new-variant_slot": variant.pk,
            "new-metric": "click",
            "new-alpha": "0.05",
        },
    )
    experiment = Experiment.objects.get(project=project)
    web.post(f"/projects/{project.pk}/experiments/{experiment.pk}/start/")
    _events(experiment, "control", control, users=900, every=5, day=0)
    _events(experiment, "variant", variant, users=500, every=5, day=0)
    detail = web.get(f"/projects/{project.pk}/experiments/{experiment.pk}/").content.decode()
    assert "srm-warning" in detail and "Sample-ratio mismatch" in detail
    # Promoting without a winner is refused with a message, nothing changes.
    web.post(f"/projects/{project.pk}/experiments/{experiment.pk}/stop/")
    experiment.refresh_from_db()
    assert experiment.status == "STOPPED"
    response = web.post(
        f"/projects/{project.pk}/experiments/{experiment.pk}/promote/", {"slot": ""}, follow=True
    )
    assert "no winner yet" in response.content.decode()
    control.refresh_from_db()
    assert control.is_active and control.weight == 50


def test_another_users_experiment_is_not_found(
    web: Client, project: Project, trained: Any, bob: Any
) -> None:
    control, variant = _slots(project, trained)
    other = Project.objects.create(owner=bob, name="b", user_column="u", item_column="i")
    assert web.get(f"/projects/{other.pk}/experiments/").status_code == 404
    exp = Experiment.objects.create(
        project=project, name="e", control_slot=control, variant_slot=variant
    )
    assert web.get(f"/projects/{project.pk}/experiments/{exp.pk}/").status_code == 200
    assert web.get(f"/projects/{other.pk}/experiments/{exp.pk}/").status_code == 404
