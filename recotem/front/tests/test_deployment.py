from __future__ import annotations

from django.test import Client

from recotem.deployment.models import DeploymentSlot, SlotHistory
from recotem.projects.models import Project
from recotem.training.models import TrainedModel
from recotem.training.services import trained_model_create, trained_model_train


def test_it_explains_what_to_do_without_models(web: Client, project: Project) -> None:
    assert (
        "Train a model</a> first" in web.get(f"/projects/{project.pk}/deployment/").content.decode()
    )


def test_it_creates_updates_rolls_back_and_removes_a_slot(
    web: Client, project: Project, trained: TrainedModel
) -> None:
    base = f"/projects/{project.pk}/deployment/"
    r = web.post(
        base + "slots/",
        {
            "new-name": "main",
            "new-trained_model": trained.pk,
            "new-weight": 100,
            "new-is_active": "on",
        },
    )
    assert r.status_code == 302
    slot = DeploymentSlot.objects.get()
    second = trained_model_train(
        trained_model_id=trained_model_create(
            configuration=trained.configuration, data=trained.data_loc, enqueue=False
        ).pk
    )
    p = f"slot{slot.pk}-"
    web.post(base + f"slots/{slot.pk}/", {p + "trained_model": second.pk, p + "weight": 40})
    slot.refresh_from_db()
    assert (slot.trained_model_id, slot.weight, slot.is_active) == (second.pk, 40, False)
    web.post(base + f"slots/{slot.pk}/rollback/")
    slot.refresh_from_db()
    assert slot.trained_model_id == trained.pk
    body = web.get(base).content.decode()
    assert "rollback" in body and SlotHistory.objects.count() == 3
    r = web.post(
        base + f"slots/{slot.pk}/", {p + "trained_model": second.pk, p + "weight": 500}, follow=True
    )
    assert "was not changed" in r.content.decode()
    web.post(base + f"slots/{slot.pk}/delete/")
    assert not DeploymentSlot.objects.exists()


def test_it_reports_a_duplicate_slot_name_inline(
    web: Client, project: Project, trained: TrainedModel
) -> None:
    base = f"/projects/{project.pk}/deployment/"
    web.post(
        base + "slots/", {"new-name": "main", "new-trained_model": trained.pk, "new-weight": 100}
    )
    r = web.post(
        base + "slots/", {"new-name": "main", "new-trained_model": trained.pk, "new-weight": 100}
    )
    assert r.status_code == 400 and "already exists" in r.content.decode()


def test_it_shows_each_active_slots_share_of_traffic_and_its_own_edit_form(
    web: Client, project: Project, trained: TrainedModel
) -> None:
    from recotem.deployment.services import slot_create

    a = slot_create(project=project, name="a", trained_model=trained, weight=30, is_active=True)
    b = slot_create(project=project, name="b", trained_model=trained, weight=10, is_active=True)
    off = slot_create(project=project, name="c", trained_model=trained, weight=50, is_active=False)
    html = web.get(f"/projects/{project.pk}/deployment/").content.decode()
    table = html[html.index('id="slots-table"') : html.index("</table>")]
    assert ">75%<" in table and ">25%<" in table and ">0%<" in table
    for slot in (a, b, off):
        assert f'name="slot{slot.pk}-weight" value="{slot.weight}"' in table
