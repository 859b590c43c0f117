from __future__ import annotations

from django.test import Client

from recotem.projects.models import Project, TrainingData
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig
from recotem.tuning.services import tuning_job_run


def _configs(web: Client, project: Project) -> None:
    r = web.post(
        f"/projects/{project.pk}/tuning/config/split/",
        {
            "split-name": "default",
            "split-scheme": "RG",
            "split-heldout_ratio": 0.2,
            "split-test_user_ratio": 0.2,
            "split-random_seed": 42,
        },
    )
    assert r.status_code == 302, r.content.decode()[:2000]
    r = web.post(
        f"/projects/{project.pk}/tuning/config/eval/",
        {"eval-name": "", "eval-cutoff": 10, "eval-target_metric": "ndcg"},
    )
    assert r.status_code == 302


def test_it_asks_for_configs_before_a_job(
    web: Client, project: Project, data: TrainingData
) -> None:
    body = web.get(f"/projects/{project.pk}/tuning/").content.decode()
    assert "Create a split config and an evaluation config below first." in body


def test_it_rejects_bad_config_values_inline(web: Client, project: Project) -> None:
    r = web.post(
        f"/projects/{project.pk}/tuning/config/split/",
        {
            "split-scheme": "RG",
            "split-heldout_ratio": 3,
            "split-test_user_ratio": "x",
            "split-random_seed": 1,
        },
    )
    assert r.status_code == 400
    assert not SplitConfig.objects.exists()
    r = web.post(
        f"/projects/{project.pk}/tuning/config/eval/",
        {"eval-cutoff": 0, "eval-target_metric": "ndcg"},
    )
    assert (
        r.status_code == 400 and "Must be a whole number between 1 and 1000." in r.content.decode()
    )


def test_it_offers_fixed_counts_and_checks_the_time_column(
    web: Client, project: Project, alice
) -> None:  # type: ignore[no-untyped-def]
    body = web.get(f"/projects/{project.pk}/tuning/").content.decode()
    assert 'name="split-n_heldout"' in body and 'name="split-n_test_users"' in body
    base = {
        "split-scheme": "RG",
        "split-heldout_ratio": 0.2,
        "split-test_user_ratio": 0.2,
        "split-random_seed": 1,
    }
    r = web.post(
        f"/projects/{project.pk}/tuning/config/split/", {**base, "split-n_heldout": 10**20}
    )
    assert r.status_code == 400 and 'id="id_split-n_heldout-errors"' in r.content.decode()
    r = web.post(
        f"/projects/{project.pk}/tuning/config/split/",
        {**base, "split-n_heldout": 2, "split-n_test_users": 50},
    )
    assert r.status_code == 302, r.content.decode()[:2000]
    assert SplitConfig.objects.values_list("n_heldout", "n_test_users").get() == (2, 50)
    untimed = Project.objects.create(owner=alice, name="untimed", user_column="u", item_column="i")
    r = web.post(f"/projects/{untimed.pk}/tuning/config/split/", {**base, "split-scheme": "TG"})
    assert r.status_code == 400 and "has no time column" in r.content.decode()
    assert not SplitConfig.objects.filter(project=untimed).exists()


def test_it_starts_a_job_and_shows_progress_plot_and_best_config(
    web: Client, project: Project, data: TrainingData
) -> None:
    _configs(web, project)
    r = web.post(
        f"/projects/{project.pk}/tuning/jobs/",
        {
            "job-data": data.pk,
            "job-split": SplitConfig.objects.get().pk,
            "job-evaluation": EvaluationConfig.objects.get().pk,
            "job-n_trials": 3,
            "job-tried_algorithms": ["TopPopRecommender", "RP3betaRecommender"],
            "job-train_after_tuning": "on",
        },
    )
    job = ParameterTuningJob.objects.get()
    assert r.status_code == 302 and r["Location"] == f"/projects/{project.pk}/tuning/jobs/{job.pk}/"
    pending = web.get(f"/projects/{project.pk}/tuning/jobs/{job.pk}/progress/").content.decode()
    assert 'hx-trigger="every 2s"' in pending and "badge-PENDING" in pending
    job = tuning_job_run(job_id=job.pk)
    assert job.status == "COMPLETED", job.error
    body = web.get(f"/projects/{project.pk}/tuning/jobs/{job.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' not in body
    assert 'id="optimization-history"' in body and "/vendor/plotly.min.js" in body
    assert 'id="best-config"' in body and job.best_config.name in body
    assert body.count('<tr><td class="num">') == job.trials.count()


def test_it_refuses_a_job_with_foreign_or_missing_ids(
    web: Client, project: Project, data: TrainingData
) -> None:
    _configs(web, project)
    r = web.post(
        f"/projects/{project.pk}/tuning/jobs/", {"job-data": 99999, "job-n_trials": "many"}
    )
    assert r.status_code == 400
    assert not ParameterTuningJob.objects.exists()


def test_it_serves_plotly_js_locally(web: Client) -> None:
    r = web.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and r["Content-Type"] == "text/javascript"
    assert b"plotly" in b"".join(r.streaming_content)[:2000].lower()
