"""irspack's classes behind the catalogue's names (worker side: this imports irspack).

Names and parameter checks live in `recotem.ml.catalogue`, which the web process uses
without irspack; this module maps a checked name to the class that fits it.
"""

from __future__ import annotations

import inspect

from irspack.recommenders import BaseRecommender
from irspack.recommenders.base import RecommenderMeta

from .catalogue import (
    UnknownRecommenderError,
    available_recommenders,
    canonical_name,
    validate_parameters,
)

__all__ = [
    "UnknownRecommenderError",
    "accepted_parameters",
    "available_recommenders",
    "canonical_name",
    "installed_recommenders",
    "parameter_free",
    "recommender_class",
    "validate_parameters",
]


def installed_recommenders() -> list[str]:
    """Concrete irspack recommender class names installed here, sorted (the catalogue's source)."""
    registry = RecommenderMeta.recommender_name_vs_recommender_class
    return sorted(
        name
        for name, cls in registry.items()
        if not inspect.isabstract(cls) and getattr(cls, "config_class", None) is not None
    )


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


def parameter_free(class_name: str) -> bool:
    """True if irspack defines no search space for the class (e.g. TopPop)."""
    return not list(getattr(recommender_class(class_name), "default_tune_range", []) or [])
