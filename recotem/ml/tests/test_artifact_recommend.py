from __future__ import annotations

import io

import pandas as pd
import pytest

from recotem.ml.artifact import ArtifactError, dump_artifact, load_artifact, read_key_id
from recotem.ml.recommend import ColdStartUnsupportedError, LoadedModel, UnknownUserError
from recotem.ml.training import FittedModel, train_model

KEY = b"k" * 32
KEYS = {"k1": KEY}


@pytest.fixture()
def fitted(log: pd.DataFrame) -> FittedModel:
    return train_model(
        log,
        "IALS",
        {"n_components": 8, "train_epochs": 3, "n_threads": 1},
        user_column="user",
        item_column="item",
    )


@pytest.fixture()
def blob(fitted: FittedModel) -> bytes:
    return dump_artifact(
        fitted, key=KEY, key_id="k1", fingerprint="rows=1681;sha=abc", metrics={"ndcg": 0.5}
    )


def test_it_round_trips_a_signed_artifact(
    fitted: FittedModel, blob: bytes, log: pd.DataFrame
) -> None:
    model = load_artifact(io.BytesIO(blob), keys=KEYS)
    assert model.class_name == "IALSRecommender" and model.data_fingerprint == "rows=1681;sha=abc"
    assert model.parameters["n_components"] == 8 and model.metrics == {"ndcg": 0.5}
    assert model.user_ids == fitted.user_ids and model.item_ids == fitted.item_ids
    loaded = model.recommend("u1", 5)
    direct = LoadedModel.from_fitted(fitted).recommend("u1", 5)
    assert [i for i, _ in loaded] == [i for i, _ in direct]
    assert [s for _, s in loaded] == pytest.approx([s for _, s in direct], rel=1e-5)
    assert read_key_id(blob) == "k1" and fitted.fit_seconds > 0


def test_it_rejects_a_tampered_artifact(blob: bytes) -> None:
    tampered = bytearray(blob)
    tampered[-10] ^= 0xFF
    with pytest.raises(ArtifactError, match="signature mismatch"):
        load_artifact(bytes(tampered), keys=KEYS)


def test_it_rejects_a_truncated_artifact(blob: bytes) -> None:
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(blob[:-1], keys=KEYS)
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(blob[:20], keys=KEYS)


def test_it_rejects_unknown_keys_wrong_keys_and_foreign_files(blob: bytes) -> None:
    with pytest.raises(ArtifactError, match="unknown key id 'k1'"):
        load_artifact(blob, keys={"k2": KEY})
    with pytest.raises(ArtifactError, match="signature mismatch"):
        load_artifact(blob, keys={"k1": b"another key"})
    with pytest.raises(ArtifactError, match="bad magic"):
        load_artifact(b"\x80\x04" + blob, keys=KEYS)  # e.g. a bare pickle


def test_it_excludes_known_items_and_rejects_unknown_users(
    fitted: FittedModel, log: pd.DataFrame
) -> None:
    model = LoadedModel.from_fitted(fitted)
    model.precompute(20)
    seen = set(log.loc[log.user == "u3", "item"])
    recs = model.recommend("u3", 10)
    assert len(recs) == 10 and not seen & {i for i, _ in recs}
    assert [s for _, s in recs] == sorted((s for _, s in recs), reverse=True)
    with pytest.raises(UnknownUserError):
        model.recommend("nobody", 10)
    batch = model.recommend_batch(["u3", "nobody"], 10)
    assert batch["nobody"] == [] and [i for i, _ in batch["u3"]] == [i for i, _ in recs]


def test_it_gives_the_same_answer_on_fast_and_live_paths(fitted: FittedModel) -> None:
    live = LoadedModel.from_fitted(fitted)  # nothing precomputed
    fast = LoadedModel.from_fitted(fitted)
    fast.precompute(15)
    allowed = [f"i{i}" for i in range(0, 60, 2)]
    for user in ("u0", "u7", "u42"):
        for kwargs in ({}, {"excluded_item_ids": ["i1", "i2"]}, {"allowed_item_ids": allowed}):
            a = [i for i, _ in live.recommend(user, 10, **kwargs)]  # type: ignore[arg-type]
            b = [i for i, _ in fast.recommend(user, 10, **kwargs)]  # type: ignore[arg-type]
            assert a == b
        assert [i for i, _ in live.recommend(user, 30)] == [i for i, _ in fast.recommend(user, 30)]
    assert set(i for i, _ in fast.recommend("u0", 10, allowed_item_ids=allowed)) <= set(allowed)


def _same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """Same items in the same order; scores equal up to float32 rounding (one user scored
    alone and the same user scored in a block go through different BLAS kernels)."""
    return [i for i, _ in a] == [i for i, _ in b] and [s for _, s in a] == pytest.approx(
        [s for _, s in b], rel=1e-5
    )


def test_it_keeps_a_users_top_list_from_their_first_request_on(fitted: FittedModel) -> None:
    eager = LoadedModel.from_fitted(fitted)
    eager.precompute(15)
    lazy = LoadedModel.from_fitted(fitted)
    lazy.keep_top(15)
    assert (eager.kept_top_users, lazy.kept_top_users) == (len(fitted.user_ids), 0)
    for user in ("u0", "u7"):
        assert _same(lazy.recommend(user, 10), eager.recommend(user, 10))
    assert lazy.kept_top_users == 2
    users = ["u1", "u2", "u7", "nobody"]
    lazy_batch, eager_batch = lazy.recommend_batch(users, 10), eager.recommend_batch(users, 10)
    assert lazy_batch["nobody"] == [] and all(_same(lazy_batch[u], eager_batch[u]) for u in users)
    assert lazy.kept_top_users == 4  # the two new users in one pass; "nobody" is not a row
    lazy.warm(["u5", "u6", "nobody"], 10)  # what the batch endpoint does before its loop
    assert lazy.kept_top_users == 6
    lazy.warm(["u8"], 16)  # beyond the kept 15: answered live, nothing to keep
    assert lazy.kept_top_users == 6
    assert _same(
        lazy.recommend("u1", 10, excluded_item_ids=["i3"]),
        eager.recommend("u1", 10, excluded_item_ids=["i3"]),
    )


def test_it_recommends_for_a_profile_without_the_profile_items(fitted: FittedModel) -> None:
    model = LoadedModel.from_fitted(fitted)
    profile = ["i0", "i1", "i2", "unknown-item"]
    recs = model.recommend_for_profile(profile, 5)
    assert len(recs) == 5 and not {"i0", "i1", "i2"} & {i for i, _ in recs}
    # the profile is cluster 0 (items 0-14): its neighbours should dominate
    assert sum(int(i[1:]) < 15 for i, _ in recs) >= 4
    with_seen = model.recommend_for_profile(profile, 60, exclude_seen=False)
    assert {"i0", "i1", "i2"} <= {i for i, _ in with_seen}
    only = model.recommend_for_profile(
        profile, 5, allowed_item_ids=["i40", "i41"], excluded_item_ids=["i41"]
    )
    assert [i for i, _ in only] == ["i40"]


def test_it_refuses_profiles_for_algorithms_without_cold_start(log: pd.DataFrame) -> None:
    fitted = train_model(
        log, "CosineUserKNN", {"top_k": 10}, user_column="user", item_column="item"
    )
    model = LoadedModel.from_fitted(fitted)
    with pytest.raises(ColdStartUnsupportedError, match="CosineUserKNNRecommender cannot"):
        model.recommend_for_profile(["i0"], 5)


def test_it_rejects_bad_training_parameters(log: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        train_model(log, "IALS", {"n_factors": 3}, user_column="user", item_column="item")


def test_it_resigns_an_artifact_without_changing_its_payload(blob: bytes) -> None:
    from recotem.ml.artifact import resign_artifact, verify_artifact

    new_key = b"n" * 32
    fresh = resign_artifact(blob, keys={"k1": KEY}, key=new_key, key_id="k2")
    assert read_key_id(fresh) == "k2"
    assert (
        verify_artifact(fresh, keys={"k2": new_key})[1]
        == verify_artifact(blob, keys={"k1": KEY})[1]
    )
    assert load_artifact(fresh, keys={"k2": new_key}).class_name == "IALSRecommender"
    with pytest.raises(ArtifactError, match="unknown key"):
        load_artifact(fresh, keys={"k1": KEY})
    forged = bytearray(blob)
    forged[-5] ^= 0x01
    with pytest.raises(ArtifactError, match="signature"):  # never re-signs what it cannot verify
        resign_artifact(bytes(forged), keys={"k1": KEY}, key=new_key, key_id="k2")
