from __future__ import annotations

import time

import pytest

from recotem.ml.timing import PHASES, PhaseTimer, describe


def test_it_accumulates_phases_in_canonical_order() -> None:
    timer = PhaseTimer()
    with timer.phase("save"):
        time.sleep(0.01)
    with timer.phase("read"):
        pass
    with timer.phase("save"):
        time.sleep(0.01)
    out = timer.as_dict()
    assert list(out) == ["read", "save"]
    assert out["save"] >= 0.02
    assert describe(out).startswith("read 0.00 s, save 0.0")


def test_it_times_a_phase_that_raises() -> None:
    timer = PhaseTimer()
    with pytest.raises(RuntimeError), timer.phase("fit"):
        raise RuntimeError("boom")
    assert "fit" in timer.as_dict()


def test_it_refuses_unknown_phase_names_and_merges_known_ones() -> None:
    timer = PhaseTimer()
    with pytest.raises(ValueError, match="unknown phase"), timer.phase("fitting"):
        pass
    timer.merge({"fit": 1.5, "model": {"fit": 2}, "bogus": 3})
    timer.merge({"fit": 0.5})
    assert timer.as_dict() == {"fit": 2.0}
    assert set(PHASES) == {"read", "matrix", "split", "fit", "evaluate", "refit", "topk", "save"}
