"""Every project page and htmx fragment of the UI is 404 for another user (never 403, never data).

The URL list comes from recotem/front/urls.py, so a new page is covered as soon as it is routed;
a route with a parameter this test does not know fails with a message saying what to add.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, reverse
from django.urls.converters import IntConverter, StringConverter

from recotem.front import urls as front_urls
from recotem.projects.models import Project, TrainingData

PROJECT_PREFIX = "projects/<int:pk>/"

# Routes that destroy what later routes need go last when the owner replays them.
DESTRUCTIVE = ("delete", "revoke")


def _project_routes() -> list[URLPattern]:
    routes = [p for p in front_urls.urlpatterns if str(p.pattern).startswith(PROJECT_PREFIX)]
    assert len(routes) >= 20, "recotem/front/urls.py changed shape; expected the project pages"
    return sorted(routes, key=lambda p: any(word in str(p.name) for word in DESTRUCTIVE))


@pytest.fixture
def world(project: Project, data: TrainingData, trained: Any) -> dict[str, Any]:
    """One of alice's objects for every kind of id a project URL can carry."""
    from recotem.accounts.services import api_key_create
    from recotem.deployment.services import slot_create
    from recotem.projects.services import item_meta_data_create
    from recotem.retraining.schedules import schedule_create
    from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

    meta = item_meta_data_create(
        project=project,
        upload=SimpleUploadedFile(
            "meta.csv", b"item_id,title\n1,One\n2,Two\n", content_type="text/csv"
        ),
    )
    split = SplitConfig.objects.create(project=project)
    evaluation = EvaluationConfig.objects.create(project=project)
    job = ParameterTuningJob.objects.create(
        project=project, data=data, split=split, evaluation=evaluation, n_trials=1
    )
    slot = slot_create(project=project, name="main", trained_model=trained)
    key, _ = api_key_create(project=project, name="k", scopes=["predict"])
    schedule = schedule_create(
        project=project, cron_expression="0 2 * * *", model_configuration=trained.configuration
    )
    from recotem.retraining.models import RetrainingRun

    run = RetrainingRun.objects.create(schedule=schedule, status="PENDING", trigger="manual")
    from recotem.experiments.services import experiment_create

    other = slot_create(project=project, name="other", trained_model=trained)
    experiment = experiment_create(project=project, name="e", control_slot=slot, variant_slot=other)
    ints = {
        "pk": project.pk,
        "job_id": job.pk,
        "model_id": trained.pk,
        "slot_id": slot.pk,
        "key_id": key.pk,
        "run_id": run.pk,
        "experiment_id": experiment.pk,
    }
    variants = {
        "data_upload": [{"kind": "data"}, {"kind": "meta"}],
        "data_preview": [{"kind": "data", "obj_id": data.pk}, {"kind": "meta", "obj_id": meta.pk}],
        "tuning_config_create": [{"kind": "split"}, {"kind": "eval"}],
        "experiment_action": [{"action": "stop"}],
    }
    return {"ints": ints, "variants": variants}


def _urls(world: dict[str, Any]) -> list[str]:
    urls = []
    for route in _project_routes():
        converters = route.pattern.converters
        for variant in world["variants"].get(route.name, [{}]):
            kwargs: dict[str, Any] = dict(variant)
            for name, converter in converters.items():
                if name in kwargs:
                    continue
                if isinstance(converter, IntConverter) and name in world["ints"]:
                    kwargs[name] = world["ints"][name]
                elif isinstance(converter, StringConverter | IntConverter):
                    pytest.fail(
                        f"front:{route.name} has a parameter {name!r} unknown to test_ownership.py; "
                        "add an object for it to the `world` fixture"
                    )
            urls.append(reverse(f"front:{route.name}", kwargs=kwargs))
    return urls


def test_it_hides_every_project_page_of_another_user(
    web: Client, bob: Any, world: dict[str, Any]
) -> None:
    urls = _urls(world)
    intruder = Client()
    intruder.force_login(bob)
    for url in urls:
        statuses = {
            "GET": intruder.get(url).status_code,
            "POST": intruder.post(url, {}).status_code,
        }
        # 405 is the method guard running first (it reveals nothing); every page must 404 on one method.
        assert set(statuses.values()) <= {404, 405} and 404 in statuses.values(), (url, statuses)

    # The same URLs are real for their owner, so the 404s above are about ownership.
    for url in urls:
        status = web.get(url).status_code
        if status == 405:
            status = web.post(url, {}).status_code
        assert status != 404, url
