"""Which irspack recommenders exist, and checking their parameters early.

Parameters arrive from a web form or JSON; checking them against irspack's
own pydantic config classes turns a typo into a 400 response instead of a
``TypeError`` deep inside a Celery task twenty minutes later.
"""

from __future__ import annotations

import inspect
from typing import Any

import pydantic
from irspack.recommenders import BaseRecommender
from irspack.recommenders.base import RecommenderMeta

# Short names people write ("IALS") map to irspack class names ("IALSRecommender").
_SUFFIX = "Recommender"


def available_recommenders() -> list[str]:
    """Concrete irspack recommender class names installed here, sorted."""
    registry = RecommenderMeta.recommender_name_vs_recommender_class
    return sorted(
        name
        for name, cls in registry.items()
        if not inspect.isabstract(cls) and getattr(cls, "config_class", None) is not None
    )


class UnknownRecommenderError(ValueError):
    """``name`` is not an installed irspack recommender; ``available`` lists the ones that are."""

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"unknown recommender class {name!r}; available: {', '.join(available)}")
        self.name = name
        self.available = available


def canonical_name(class_name: str) -> str:
    """``"IALS"`` or ``"IALSRecommender"`` -> ``"IALSRecommender"``; ValueError if unknown."""
    names = available_recommenders()
    if class_name in names:
        return class_name
    if class_name + _SUFFIX in names:
        return class_name + _SUFFIX
    raise UnknownRecommenderError(class_name, names)


def recommender_class(class_name: str) -> type[BaseRecommender]:
    """The irspack class for a (short or full) name; ValueError if unknown."""
    cls = RecommenderMeta.recommender_name_vs_recommender_class[canonical_name(class_name)]
    assert isinstance(cls, type) and issubclass(cls, BaseRecommender)
    return cls


def accepted_parameters(class_name: str) -> set[str]:
    """Constructor keywords of a class (beyond the interaction matrix)."""
    cls = recommender_class(class_name)
    sig = inspect.signature(cls.__init__)
    return {
        name
        for name, p in sig.parameters.items()
        if name not in ("self", "X_train_all", "X_train", "X")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def validate_parameters(class_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` for ``class_name`` and return them coerced to proper types.

    Uses the class's pydantic ``config_class`` (which forbids unknown keys).
    Raises ValueError with one line per problem, naming the parameter.
    """
    cls = recommender_class(class_name)
    if not isinstance(params, dict):
        raise ValueError("parameters must be a JSON object")
    config_class = cls.config_class
    try:
        config = config_class(**params)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(parameters)"
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(config_class.model_fields)) or "none"
                problems.append(f"{loc}: unknown parameter for {cls.__name__} (allowed: {allowed})")
            else:
                problems.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        raise ValueError(f"invalid parameters for {cls.__name__}: " + "; ".join(problems)) from None
    dumped = config.model_dump()
    return {key: dumped[key] for key in params}


def parameter_free(class_name: str) -> bool:
    """True if irspack defines no search space for the class (e.g. TopPop)."""
    return not list(getattr(recommender_class(class_name), "default_tune_range", []) or [])
