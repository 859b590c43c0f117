"""The recommenders Recotem offers and the parameters each takes, known without importing irspack.

The web process names algorithms on every form and checks each model configuration; importing
irspack for that would pull numba and scipy (~150 MB) into a process that never fits a model
(issue 13: the web loads the ML stack only for inference). So this table mirrors irspack 0.5.2's
pydantic config classes, and the checks run on pydantic models built from it: the same
coercions and messages as irspack's own classes. ``ml/tests/test_catalogue.py`` compares the
table with irspack's registry, field by field, and fails when an irspack upgrade adds, drops or
changes a recommender, a parameter, a type or a default. Recommenders irspack registers only
when an optional package is installed (BPRFM with lightfm, MultVAE with jax) are not offered.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import pydantic

# Short names people write ("IALS") map to irspack class names ("IALSRecommender").
_SUFFIX = "Recommender"

# (type, default) per constructor parameter, as irspack's config classes declare them.
_KNN_BASE: dict[str, tuple[Any, Any]] = {
    "shrinkage": (float, 0.0),
    "top_k": (int, 100),
    "n_threads": (int | None, None),
}
_KNN_WEIGHTED: dict[str, tuple[Any, Any]] = {
    **_KNN_BASE,
    "feature_weighting": (str, "NONE"),
    "bm25_k1": (float, 1.2),
    "bm25_b": (float, 0.75),
}
_GRAPH: dict[str, tuple[Any, Any]] = {
    "alpha": (float, 1),
    "top_k": (int | None, None),
    "normalize_weight": (bool, False),
    "n_threads": (int | None, None),
}

PARAMETERS: dict[str, dict[str, tuple[Any, Any]]] = {
    "AsymmetricCosineKNNRecommender": {**_KNN_WEIGHTED, "alpha": (float, 0.5)},
    "AsymmetricCosineUserKNNRecommender": {**_KNN_WEIGHTED, "alpha": (float, 0.5)},
    "CosineKNNRecommender": {**_KNN_WEIGHTED, "normalize": (bool, False)},
    "CosineUserKNNRecommender": {**_KNN_WEIGHTED, "normalize": (bool, True)},
    "DenseSLIMRecommender": {"reg": (float, 1)},
    "EDLAERecommender": {"reg": (float, 1.0), "dropout_p": (float, 0.1)},
    "IALSRecommender": {
        "train_epochs": (int, 16),
        "n_components": (int, 20),
        "alpha0": (float, 1.0),
        "reg": (float, 0.001),
        "nu": (float, 1.0),
        "confidence_scaling": (str, "none"),
        "epsilon": (float, 1.0),
        "init_std": (float, 0.1),
        "solver_type": (Literal["CG", "CHOLESKY"], "CG"),
        "max_cg_steps": (int, 3),
        "loss_type": (Literal["IALSPP", "ORIGINAL"], "IALSPP"),
        "nu_star": (float | None, None),
        "random_seed": (int, 42),
        "n_threads": (int | None, None),
        "prediction_time_max_cg_steps": (int, 5),
        "lambda_user_feature": (float, 0.0),
        "lambda_item_feature": (float, 0.0),
        "feature_warmup_epochs": (int, 0),
    },
    "JaccardKNNRecommender": dict(_KNN_BASE),
    "NMFRecommender": {
        "n_components": (int, 64),
        "alpha": (float, 0.01),
        "l1_ratio": (float, 0.01),
        "beta_loss": (str, "frobenius"),
        "init": (str | None, None),
    },
    "P3alphaRecommender": dict(_GRAPH),
    "RP3betaRecommender": {
        "alpha": (float, 1),
        "beta": (float, 0.6),
        **{k: v for k, v in _GRAPH.items() if k != "alpha"},
    },
    "SLIMRecommender": {
        "alpha": (float, 0.05),
        "l1_ratio": (float, 0.01),
        "positive_only": (bool, True),
        "n_iter": (int, 100),
        "tol": (float, 0.0001),
        "top_k": (int | None, None),
        "n_threads": (int | None, None),
    },
    "TopPopRecommender": {},
    "TruncatedSVDRecommender": {"n_components": (int, 4), "random_seed": (int, 0)},
    "TverskyIndexKNNRecommender": {
        **_KNN_BASE,
        "alpha": (float, 0.5),
        "beta": (float, 0.5),
    },
}

# What a tuning job tries when the user names no algorithm.
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "IALSRecommender",
    "RP3betaRecommender",
    "CosineKNNRecommender",
    "TopPopRecommender",
)


def available_recommenders() -> list[str]:
    """The recommender class names Recotem offers, sorted."""
    return sorted(PARAMETERS)


class UnknownRecommenderError(ValueError):
    """``name`` is not a recommender Recotem offers; ``available`` lists the ones it does."""

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"unknown recommender class {name!r}; available: {', '.join(available)}")
        self.name = name
        self.available = available


def canonical_name(class_name: str) -> str:
    """``"IALS"`` or ``"IALSRecommender"`` -> ``"IALSRecommender"``; ValueError if unknown."""
    if class_name in PARAMETERS:
        return class_name
    if class_name + _SUFFIX in PARAMETERS:
        return class_name + _SUFFIX
    raise UnknownRecommenderError(class_name, available_recommenders())


@functools.cache
def config_model(class_name: str) -> type[pydantic.BaseModel]:
    """A pydantic model with the fields of irspack's config class for ``class_name``."""
    name = canonical_name(class_name)
    fields: dict[str, Any] = dict(PARAMETERS[name])
    return pydantic.create_model(
        name.removesuffix(_SUFFIX) + "Config",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )


def validate_parameters(class_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` for ``class_name`` and return them coerced to proper types.

    Raises ValueError with one line per problem, naming the parameter.
    """
    name = canonical_name(class_name)
    if not isinstance(params, dict):
        raise ValueError("parameters must be a JSON object")
    model = config_model(name)
    try:
        config = model(**params)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(parameters)"
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(model.model_fields)) or "none"
                problems.append(f"{loc}: unknown parameter for {name} (allowed: {allowed})")
            else:
                problems.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        raise ValueError(f"invalid parameters for {name}: " + "; ".join(problems)) from None
    dumped = config.model_dump()
    return {key: dumped[key] for key in params}
