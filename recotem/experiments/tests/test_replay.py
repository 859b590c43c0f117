"""Issue 12's "Done when", replayed on MovieLens-100k against real processes.

Once on the embedded default (``recotem up``: SQLite, the embedded broker) and once on
PostgreSQL + Redis (``recotem web``/``worker``/``beat``/``inference``), sharing one stack per
backend across the tests of this module, which build on each other in order:

1. Every user's held-out liked items (rating >= 4, hidden as the holdout protocol hides pairs:
   20 % of each user's distinct items) are never uploaded. TopPop and an IALS tuned by a short
   real tuning job serve two slots 50/50; an experiment (control TopPop, variant IALS, metric
   click) runs. A replay client predicts for users through the project's batch endpoint (each
   user on their sticky slot; some users asked twice more on the single endpoint), sends an
   ``impression`` for every item shown and a ``click`` for every shown item the user liked, and
   looks at the always-valid results after every chunk of users until IALS is ``variant_better``
   (``ci_low > 0``, SRM p-value > 0.001). ``promote`` then moves every user to IALS.
2. An ``events`` data source turns the stored clicks into a snapshot that a triggered retraining
   run trains on (row count = clicks stored, retried duplicates not counted).
3. Canary deploys of the IALS slot, decided by the real beat + worker: a model trained on data
   whose item ids a broken export scrambled passes the offline gate (its data is consistent with
   itself) but loses live, and is rolled back with a signed webhook; a model equal to the
   incumbent is promoted. The window is the shortest the API accepts (1 minute); the test ends it
   early through the database, as ``test_canary.py`` does, and the periodic task decides.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import require
from recotem.inference.testing import run_cli
from recotem.lib.signing import RequestTokens, ServedBy, verify_signature
from recotem.testing import stack as stacks
from recotem.testing.processes import (
    WebhookRecorder,
    fresh_postgres_database,
    postgres_available,
    private_redis,
    redis_available,
    wait_until,
)

pytestmark = pytest.mark.integration

CUTOFF = 10
CHUNK = 100  # users per predict batch; their impressions fill one events batch
assert CHUNK * CUTOFF <= 1000  # the most events one POST /inference/events takes
STICKY_PROBES = 3  # users per chunk asked twice more on the single-user endpoint
ENV = {
    "RECOTEM_INFERENCE_POLL_SECONDS": "0.2",  # routing changes reach inference within a second
    "RECOTEM_REAPER_SECONDS": "2",  # the periodic canary decision, every 2 s
    "RECOTEM_ALLOWED_SOURCE_HOSTS": "127.0.0.1",  # the webhook receiver below
    "RECOTEM_LOG_LEVEL": "INFO",
}


class _Hooks(WebhookRecorder):
    received: ClassVar[list[tuple[bytes, str]]] = []


@dataclass
class Loop:
    stack: stacks.Stack
    api: httpx.Client
    inference: httpx.Client
    tokens: RequestTokens
    project: int
    visible: int  # the uploaded training data
    scrambled: int  # the same data with its item ids scrambled
    liked: dict[str, set[str]]
    users: list[str]  # replay order
    toppop_slot: int
    ials_slot: int
    ials_model: int
    ials_config: int
    hook_url: str
    clicks_stored: int = 0
    schedule: int = 0
    webhook_secret: str = ""
    done: set[str] = field(default_factory=set)

    def need(self, step: str) -> None:
        if step not in self.done:
            pytest.skip(f"needs the earlier step {step!r} of this module")


def holdout(ratings: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """The holdout protocol's split (shared/tools/holdout_protocol.py ``make_split``): for every
    user with >= 5 distinct items, round(20 %) of them hidden, drawn with
    ``default_rng(seed)`` over users and items in string order. Returns the visible rows and,
    per user, the hidden items rated >= 4: what that user really liked and never uploaded."""
    d = ratings.astype({"user_id": str, "item_id": str})
    d = d.drop_duplicates(["user_id", "item_id"], keep="last")
    d = d.sort_values(["user_id", "item_id"], kind="mergesort").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    hidden = np.zeros(len(d), dtype=bool)
    for _, rows in sorted(d.groupby("user_id").indices.items()):
        n = len(rows)
        if n >= 5:
            k = max(1, min(int(np.floor(0.2 * n + 0.5)), n - 1))
            hidden[rows[rng.choice(n, size=k, replace=False)]] = True
    test = d[hidden & (d.rating >= 4)]
    return d[~hidden], test.groupby("user_id").item_id.agg(set).to_dict()


def _upload(api: httpx.Client, project: int, frame: pd.DataFrame, name: str) -> dict[str, Any]:
    r = api.post(
        "/training_data/",
        data={"project": str(project)},
        files={"file": (name, frame.to_csv(index=False).encode(), "text/csv")},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _post(api: httpx.Client, path: str, body: dict[str, Any], code: int = 201) -> dict[str, Any]:
    r = api.post(path, json=body)
    assert r.status_code == code, f"{path}: {r.status_code} {r.text}"
    return dict(r.json())


def _served_by(loop: Loop, request_id: str) -> ServedBy:
    """What a request id says served the prediction (it must be genuine)."""
    by = loop.tokens.verify(request_id)
    assert by is not None, f"forged or malformed request id {request_id!r}"
    return by


def _serving(loop: Loop, wanted: Callable[[ServedBy], bool], what: str) -> None:
    """Wait until inference serves as ``wanted`` says (its routing reloads within a second)."""

    def check() -> bool:
        r = loop.inference.post(
            f"/predict/project/{loop.project}", json={"user_id": loop.users[0], "cutoff": 1}
        )
        return r.status_code == 200 and wanted(_served_by(loop, r.json()["request_id"]))

    wait_until(check, 30, 0.1, f"inference serving {what}")


@pytest.fixture(scope="module", params=["embedded", "postgres-redis"])
def loop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ml100k_df: Any
) -> Iterator[Loop]:
    data_dir = tmp_path_factory.mktemp(f"replay-{request.param}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    _Hooks.received = []
    try:
        if request.param == "embedded":
            with stacks.embedded(data_dir, **ENV) as stack:
                yield _build(stack, ml100k_df, hook_url)
            return
        require(postgres_available(), "PostgreSQL is needed")
        require(shutil.which("redis-server") is not None, "redis-server is not installed")
        with (
            fresh_postgres_database("recotem_replay") as db_url,
            private_redis(data_dir) as redis_url,
        ):
            assert redis_available(redis_url)
            with stacks.postgres_redis(
                data_dir, database_url=db_url, broker_url=redis_url, **ENV
            ) as stack:
                yield _build(stack, ml100k_df, hook_url)
    finally:
        server.shutdown()
        server.server_close()


def _build(stack: stacks.Stack, ratings: pd.DataFrame, hook_url: str) -> Loop:
    """Project, the visible data (and a scrambled copy), TopPop, a tuned IALS, two slots 50/50."""
    began = time.monotonic()
    with stack.explained():
        api = stack.api()
        visible, liked = holdout(ratings)
        uploaded = set(zip(visible.user_id, visible.item_id, strict=True))
        assert not any((u, i) in uploaded for u, items in liked.items() for i in items)
        project = _post(
            api,
            "/project/",
            {"name": "ml100k", "user_column": "user_id", "item_column": "item_id"},
        )["id"]
        data = _upload(api, project, visible, "visible.csv")
        assert data["row_count"] == len(visible)
        toppop_config = _post(
            api,
            "/model_configuration/",
            {
                "project": project,
                "name": "toppop",
                "recommender_class_name": "TopPopRecommender",
                "parameters_json": {},
            },
        )["id"]
        toppop = _post(
            api, "/trained_model/", {"configuration": toppop_config, "data_loc": data["id"]}
        )["id"]
        split = _post(api, "/split_config/", {"project": project, "scheme": "RG"})["id"]
        evaluation = _post(
            api,
            "/evaluation_config/",
            {"project": project, "cutoff": CUTOFF, "target_metric": "ndcg"},
        )["id"]
        job = _post(
            api,
            "/parameter_tuning_job/",
            {
                "data": data["id"],
                "split": split,
                "evaluation": evaluation,
                "n_trials": 8,
                "tried_algorithms": ["IALSRecommender"],
                "random_seed": 0,
            },
        )["id"]
        # A broken export: the same interactions with item ids swapped among themselves.
        items = np.sort(visible.item_id.unique())
        swap = dict(zip(items, np.random.default_rng(1).permutation(items), strict=True))
        scrambled = _upload(
            api, project, visible.assign(item_id=visible.item_id.map(swap)), "scrambled.csv"
        )
        tuned = stacks.wait_job(api, f"/parameter_tuning_job/{job}/", timeout=300)
        assert tuned["status"] == "COMPLETED", tuned["error"]
        assert stacks.wait_job(api, f"/trained_model/{toppop}/")["status"] == "COMPLETED"
        ials = stacks.wait_job(api, f"/trained_model/{tuned['tuned_model']}/")
        assert ials["status"] == "COMPLETED" and ials["configuration"] == tuned["best_config"]
        slots = [
            _post(
                api,
                "/deployment_slot/",
                {"project": project, "name": name, "trained_model": model, "weight": 50},
            )["id"]
            for name, model in (("toppop", toppop), ("ials", ials["id"]))
        ]
        key = _post(api, "/api_keys/", {"project": project, "name": "shop", "scopes": ["predict"]})[
            "key"
        ]
    users = sorted(visible.user_id.unique())
    np.random.default_rng(2).shuffle(users)
    params = api.get(f"/model_configuration/{tuned['best_config']}/").json()["parameters_json"]
    print(
        f"setup {time.monotonic() - began:.1f} s; tuned IALS {params}, "
        f"validation ndcg@{CUTOFF} {tuned['best_score']:.4f}, timings {tuned['timings']}"
    )
    return Loop(
        stack=stack,
        api=api,
        inference=stack.key_client(key),
        tokens=stack.request_tokens(),
        project=project,
        visible=data["id"],
        scrambled=scrambled["id"],
        liked=liked,
        users=[str(u) for u in users],
        toppop_slot=slots[0],
        ials_slot=slots[1],
        ials_model=ials["id"],
        ials_config=tuned["best_config"],
        hook_url=hook_url,
    )


@dataclass
class Replayed:
    slot_of: dict[str, int] = field(default_factory=dict)
    clicks: int = 0  # click events accepted
    last_clicks: list[dict[str, Any]] = field(default_factory=list)


def _send(loop: Loop, events: list[dict[str, Any]]) -> dict[str, int]:
    r = loop.inference.post("/events", json={"events": events})
    assert r.status_code == 202, r.text
    return dict(r.json())


def replay(
    loop: Loop, users: list[str], tag: str, replayed: Replayed, arms: dict[int, tuple[int, str]]
) -> None:
    """One chunk: predict (project batch, sticky per user), impressions, clicks on liked items.

    ``arms`` maps each slot to the (experiment, arm) its request ids must name."""
    r = loop.inference.post(
        f"/predict/project/{loop.project}/batch", json={"user_ids": users, "cutoff": CUTOFF}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    impressions, clicks = [], []
    for result in body["results"]:
        user = result["user_id"]
        # Users spread over slots name theirs; a batch all on one slot names it once, on top.
        slot = result.get("slot_id", body["slot_id"])
        request_id = result.get("request_id", body["request_id"])
        assert user not in replayed.slot_of or replayed.slot_of[user] == slot, user
        replayed.slot_of[user] = slot
        model = result.get("model_id", body["model_id"])
        experiment, arm = arms[slot]
        assert _served_by(loop, request_id) == ServedBy(loop.project, slot, model, experiment, arm)
        shown = [item["item_id"] for item in result["items"]]
        assert len(shown) == CUTOFF, result
        common = {"user_id": user, "request_id": request_id}
        impressions += [{"type": "impression", "item_id": i, **common} for i in shown]
        clicks += [
            {"type": "click", "item_id": i, "event_id": f"{tag}-{user}-{i}", **common}
            for i in shown
            if i in loop.liked.get(user, ())
        ]
    for user in users[:STICKY_PROBES]:  # the single-user endpoint agrees, every time
        for _ in range(2):
            one = loop.inference.post(
                f"/predict/project/{loop.project}", json={"user_id": user, "cutoff": CUTOFF}
            )
            assert one.status_code == 200 and one.json()["slot_id"] == replayed.slot_of[user]
    assert _send(loop, impressions) == {"accepted": len(impressions), "duplicates": 0}
    if clicks:
        assert _send(loop, clicks) == {"accepted": len(clicks), "duplicates": 0}
        replayed.clicks += len(clicks)
        replayed.last_clicks = clicks


def _results(loop: Loop, experiment: int) -> dict[str, Any]:
    r = loop.api.get(f"/experiment/{experiment}/results/")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _replay_until(
    loop: Loop, experiment: int, tag: str, decided: str | None, users: list[str]
) -> tuple[Replayed, dict[str, Any]]:
    """Replay chunk after chunk, looking at the always-valid results after each (peeking is what
    they are made for), until the decision is ``decided`` (None: all of ``users``)."""
    replayed = Replayed()
    results = _results(loop, experiment)
    control, variant = results["arms"]
    arms = {control["slot"]: (experiment, "control"), variant["slot"]: (experiment, "variant")}
    for start in range(0, len(users), CHUNK):
        replay(loop, users[start : start + CHUNK], tag, replayed, arms)
        results = _results(loop, experiment)
        if decided is not None and results["decision"] == decided:
            break
    print(
        f"{tag}: {len(replayed.slot_of)} users replayed, decision {results['decision']}, "
        f"arms {[(a['users'], a['converted']) for a in results['arms']]}, "
        f"ci [{results['ci_low']:.3f}, {results['ci_high']:.3f}], srm p {results['srm_p_value']:.3f}"
    )
    return replayed, results


def _check_arms(results: dict[str, Any], replayed: Replayed) -> None:
    """Each arm counts exactly the users its slot served (each user once, in one arm)."""
    for arm in results["arms"]:
        served = [u for u, s in replayed.slot_of.items() if s == arm["slot"]]
        assert arm["users"] == len(served), (arm, len(served))
        assert 0 <= arm["converted"] <= arm["users"] and 0.0 <= arm["rate"] <= 1.0


def test_tuned_ials_beats_toppop_live_and_promote_moves_every_user(loop: Loop) -> None:
    began = time.monotonic()
    with loop.stack.explained():
        experiment = _post(
            loop.api,
            "/experiment/",
            {
                "project": loop.project,
                "name": "TopPop vs tuned IALS",
                "control_slot": loop.toppop_slot,
                "variant_slot": loop.ials_slot,
                "metric": "click",
            },
        )["id"]
        started = _post(loop.api, f"/experiment/{experiment}/start/", {}, code=200)
        assert started["status"] == "RUNNING"
        _serving(loop, lambda by: by.experiment_id == experiment, "the experiment's arms")

        replayed, results = _replay_until(loop, experiment, "ab", "variant_better", loop.users)
        assert results["decision"] == "variant_better", results
        assert results["ci_low"] > 0 and results["lift"] > 0, results
        assert results["srm_p_value"] > 0.001 and not results["warnings"], results
        assert set(replayed.slot_of.values()) == {loop.toppop_slot, loop.ials_slot}
        _check_arms(results, replayed)
        control, variant = results["arms"]
        assert (control["slot"], variant["slot"]) == (loop.toppop_slot, loop.ials_slot)

        # A client retrying its last click batch: stored once (event_id), told it was a duplicate.
        retried = _send(loop, replayed.last_clicks)
        assert retried == {"accepted": 0, "duplicates": len(replayed.last_clicks)}
        loop.clicks_stored = replayed.clicks

        promoted = _post(loop.api, f"/experiment/{experiment}/promote/", {}, code=200)
        assert (promoted["status"], promoted["decision"], promoted["promoted_slot"]) == (
            "STOPPED",
            "variant_better",
            loop.ials_slot,
        )
        _serving(loop, lambda by: by.experiment_id == 0, "no experiment")
        everyone = loop.inference.post(
            f"/predict/project/{loop.project}/batch",
            json={"user_ids": loop.users, "cutoff": CUTOFF},
        ).json()
        # Every user on one slot: the answer names it once, for all of them.
        assert (everyone["slot_id"], everyone["model_id"]) == (loop.ials_slot, loop.ials_model)
        assert _served_by(loop, everyone["request_id"]) == ServedBy(
            loop.project, loop.ials_slot, loop.ials_model, 0, ""
        )
        assert all("slot_id" not in r for r in everyone["results"])
        assert len(everyone["results"]) == len(loop.users)
        slots = {
            s["id"]: s
            for s in loop.api.get(f"/deployment_slot/?project={loop.project}").json()["results"]
        }
        assert (slots[loop.ials_slot]["weight"], slots[loop.ials_slot]["is_active"]) == (100, True)
        assert slots[loop.toppop_slot]["is_active"] is False
        for slot, what in ((loop.ials_slot, "promoted"), (loop.toppop_slot, "deactivated")):
            history = loop.api.get(f"/deployment_slot/{slot}/history/").json()
            entries = history["results"] if isinstance(history, dict) else history
            assert entries[0]["changed_by"] == f"experiment #{experiment}: {what}", entries[0]
    loop.done.add("promoted")
    print(f"experiment + promote {time.monotonic() - began:.1f} s")


def test_an_events_source_turns_the_clicks_into_the_snapshot_a_run_trains_on(loop: Loop) -> None:
    loop.need("promoted")
    began = time.monotonic()
    with loop.stack.explained():
        source = _post(loop.api, "/data_source/", {"project": loop.project, "kind": "events"})
        assert source["event_types"] is None  # default: every type but impression
        schedule = _post(
            loop.api,
            "/retraining_schedule/",
            {
                "project": loop.project,
                "model_configuration": loop.ials_config,
                "cron_expression": "0 3 * * *",
                "is_enabled": False,
                "notify_on_failure": True,
                "webhook_url": loop.hook_url,
            },
        )
        loop.schedule, loop.webhook_secret = schedule["id"], schedule["webhook_secret"]
        run_id = _post(loop.api, f"/retraining_schedule/{loop.schedule}/trigger/", {}, code=202)[
            "run_id"
        ]
        run = stacks.wait_job(loop.api, f"/retraining_run/{run_id}/")
        assert run["status"] == "COMPLETED", run["error_message"]
        snapshot = loop.api.get(f"/training_data/{run['training_data']}/").json()
        assert snapshot["data_source"] == source["id"], snapshot
        # Every stored click once: the retried batch's duplicates were never stored.
        assert snapshot["row_count"] == run["data_rows"] == loop.clicks_stored, snapshot
        model = loop.api.get(f"/trained_model/{run['trained_model']}/").json()
        assert (model["status"], model["data_loc"]) == ("COMPLETED", snapshot["id"]), model
        # Later runs of this schedule train on uploads again.
        assert loop.api.delete(f"/data_source/{source['id']}/").status_code == 204
    loop.done.add("events")
    print(f"events source + run {time.monotonic() - began:.1f} s ({loop.clicks_stored} clicks)")


def _canary(loop: Loop, training_data: int) -> tuple[dict[str, Any], int, int]:
    """Trigger the schedule on ``training_data``: the run completes with a canary started.
    Returns the run, its experiment and the canary slot."""
    r = loop.api.patch(
        f"/retraining_schedule/{loop.schedule}/", json={"training_data": training_data}
    )
    assert r.status_code == 200, r.text
    run_id = _post(loop.api, f"/retraining_schedule/{loop.schedule}/trigger/", {}, code=202)[
        "run_id"
    ]
    run = stacks.wait_job(loop.api, f"/retraining_run/{run_id}/")
    assert (run["status"], run["gate_decision"]) == ("COMPLETED", "canary"), run
    assert run["canary"]["status"] == "RUNNING" and run["canary"]["promoted"] is None, run
    experiment = run["canary"]["experiment"]
    _serving(loop, lambda by: by.experiment_id == experiment, "the canary")
    return run, experiment, run["deployed_slot"]


def _decided(loop: Loop, experiment: int) -> dict[str, Any]:
    """End the canary's window in the real database; the periodic task (beat -> worker) decides.

    (On a machine so slow that the real minute has passed, the task has decided already.)"""
    if loop.api.get(f"/experiment/{experiment}/").json()["status"] == "RUNNING":
        run_cli(loop.stack.env, "end-canary", "--experiment", str(experiment))
    body: dict[str, Any] = wait_until(
        lambda: (
            (e := loop.api.get(f"/experiment/{experiment}/").json())["status"] == "STOPPED" and e
        ),
        60,
        0.2,
        f"the canary decision of experiment {experiment}",
    )
    return body


def _slot(loop: Loop, slot: int) -> dict[str, Any]:
    return dict(loop.api.get(f"/deployment_slot/{slot}/").json())


def test_a_canary_that_loses_live_is_rolled_back_and_an_equal_one_promoted(loop: Loop) -> None:
    loop.need("events")
    began = time.monotonic()
    with loop.stack.explained():
        r = loop.api.patch(
            f"/retraining_schedule/{loop.schedule}/",
            json={
                "auto_deploy": True,
                "deploy_slot": loop.ials_slot,
                "deploy_mode": "canary",
                "canary_percent": 50,
                "canary_minutes": 1,  # the shortest window the API accepts
            },
        )
        assert r.status_code == 200, r.text

        # Worse: item ids scrambled by the export. Consistent with itself, the data passes the
        # offline gate (the same configuration as the incumbent, above the TopPop floor) ...
        run, experiment, canary = _canary(loop, loop.scrambled)
        assert (_slot(loop, loop.ials_slot)["weight"], _slot(loop, canary)["weight"]) == (50, 50)
        # ... but its users click nothing they liked: control_better, while the window runs.
        replayed, results = _replay_until(
            loop, experiment, "worse", "control_better", loop.users[:500]
        )
        assert results["decision"] == "control_better" and results["ci_high"] < 0, results
        assert results["srm_p_value"] > 0.001, results
        _check_arms(results, replayed)
        decided = _decided(loop, experiment)
        assert (decided["decision"], decided["promoted_slot"]) == ("control_better", None)
        target = _slot(loop, loop.ials_slot)
        assert (target["weight"], target["trained_model"]) == (100, loop.ials_model), target
        assert _slot(loop, canary)["is_active"] is False
        shown = loop.api.get(f"/retraining_run/{run['id']}/").json()["canary"]
        assert (shown["decision"], shown["promoted"]) == ("control_better", False), shown
        # Notified like a failure: a signed webhook from the worker.
        (body, signature), *_ = wait_until(
            lambda: _Hooks.received, 60, 0.2, "the rolled-back webhook"
        )
        assert verify_signature(body, signature, loop.webhook_secret.encode())
        payload = json.loads(body)
        assert payload["event"] == "retraining.canary.rolled_back", payload
        assert payload["run"]["id"] == run["id"] and payload["experiment"]["id"] == experiment

        # Equal: the same configuration on the real data again. No difference live: promoted.
        run, experiment, canary = _canary(loop, loop.visible)
        replayed, results = _replay_until(loop, experiment, "equal", None, loop.users[:300])
        assert results["decision"] != "control_better", results
        _check_arms(results, replayed)
        decided = _decided(loop, experiment)
        assert (
            decided["decision"] != "control_better" and decided["promoted_slot"] == loop.ials_slot
        )
        target = _slot(loop, loop.ials_slot)
        assert (target["weight"], target["trained_model"]) == (100, run["trained_model"]), target
        assert _slot(loop, canary)["is_active"] is False
        history = loop.api.get(f"/deployment_slot/{loop.ials_slot}/history/").json()
        latest = (history["results"] if isinstance(history, dict) else history)[0]
        assert (latest["trained_model"], latest["previous_model"], latest["changed_by"]) == (
            run["trained_model"],
            loop.ials_model,
            f"canary of run #{run['id']}",
        )
        shown = loop.api.get(f"/retraining_run/{run['id']}/").json()["canary"]
        assert shown["promoted"] is True, shown
        assert len(_Hooks.received) == 1  # a promotion notifies nobody
    print(f"two canaries {time.monotonic() - began:.1f} s")
