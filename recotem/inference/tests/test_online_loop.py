"""End to end against a real inference server process: predictions for users across two slots
in a running experiment, impressions and clicks sent back with the returned request ids, and
the experiment's results counting each user once in the arm that served them."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest

from recotem.inference.testing import free_port, isolated_env, run_cli, start_server, stop_server

pytestmark = pytest.mark.integration


def test_it_closes_the_loop_with_a_real_server(tmp_path: Any) -> None:
    csv = tmp_path / "small.csv"
    csv.write_text(
        "user_id,item_id\n"
        + "".join(f"{u},{i}\n" for u in range(1, 61) for i in range(1, 21) if (u * 7 + i * 3) % 4)
    )
    (tmp_path / "data").mkdir()
    env = isolated_env(tmp_path / "data", RECOTEM_INFERENCE_POLL_SECONDS="0.2")
    world = json.loads(
        run_cli(
            env,
            "setup",
            "--csv",
            str(csv),
            "--models",
            'IALS:{"n_components": 8}',
            "TopPop:{}",
            "--weights",
            "50",
            "50",
        )
    )
    control, variant = world["slot_ids"]
    experiment = json.loads(
        run_cli(env, "experiment", "--control", str(control), "--variant", str(variant))
    )["experiment_id"]
    port = free_port()
    proc = start_server("recotem.inference.app:application", env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        path = f"/inference/predict/project/{world['project_id']}"
        with httpx.Client(base_url=base, headers={"X-API-Key": world["key"]}, timeout=10) as c:
            slot_of: dict[str, int] = {}
            events: list[dict[str, Any]] = []
            clicked: Counter[int] = Counter()
            for user in map(str, range(1, 61)):
                answers = [c.post(path, json={"user_id": user, "cutoff": 3}) for _ in range(3)]
                assert all(a.status_code == 200 for a in answers), answers[0].text
                slots = {a.json()["slot_id"] for a in answers}
                assert len(slots) == 1, (user, slots)  # sticky
                body = answers[0].json()
                slot_of[user] = body["slot_id"]
                for item in body["items"]:
                    events.append(
                        {
                            "type": "impression",
                            "user_id": user,
                            "item_id": item["item_id"],
                            "request_id": body["request_id"],
                            "event_id": f"imp-{user}-{item['item_id']}",
                        }
                    )
                if int(user) % 3 == 0:  # every third user clicks twice
                    clicked[body["slot_id"]] += 1
                    for item in body["items"][:2]:
                        events.append(
                            {
                                "type": "click",
                                "user_id": user,
                                "item_id": item["item_id"],
                                "request_id": body["request_id"],
                            }
                        )
            sent = c.post("/inference/events", json={"events": events})
            assert sent.status_code == 202, sent.text
            assert sent.json() == {"accepted": len(events), "duplicates": 0}
            keyed = [e for e in events if "event_id" in e][:10]
            retry = c.post("/inference/events", json={"events": keyed})
            assert retry.json() == {"accepted": 0, "duplicates": 10}
        # Read right after the 202s: results are computed fresh from the events (no cache), so
        # every accepted event already counts below.
        result = json.loads(run_cli(env, "results", "--experiment", str(experiment)))
        per_slot = Counter(slot_of.values())
        arms = {a["slot"]: a for a in result["arms"]}
        assert set(per_slot) == {control, variant}  # 60 users reach both slots
        for slot in (control, variant):
            assert arms[slot]["users"] == per_slot[slot]
            assert arms[slot]["converted"] == clicked[slot]
            assert 0.0 <= arms[slot]["rate"] <= 1.0
        assert result["decision"] in ("continue", "variant_better", "control_better")
        assert result["srm_p_value"] > 0.001
    finally:
        stop_server(proc)
