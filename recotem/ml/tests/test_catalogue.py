"""The irspack-free catalogue says what irspack itself would say (issue 13, lean web).

The catalogue is a copy of irspack's config classes; these tests are what keeps the copy
true: an irspack upgrade that adds a recommender, renames a parameter or changes a type or a
default fails here, not in a worker twenty minutes into a job.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recotem.ml import catalogue
from recotem.ml.registry import installed_recommenders, recommender_class


def _without_titles(schema: Any) -> Any:
    """A JSON schema minus the display titles (irspack's class names differ from ours)."""
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def test_it_offers_exactly_the_recommenders_irspack_installs() -> None:
    assert catalogue.available_recommenders() == installed_recommenders()


@pytest.mark.parametrize("name", installed_recommenders())
def test_each_parameter_has_irspacks_type_default_and_order(name: str) -> None:
    ours = catalogue.config_model(name)
    theirs = recommender_class(name).config_class
    assert list(ours.model_fields) == list(theirs.model_fields)
    assert _without_titles(ours.model_json_schema()) == _without_titles(theirs.model_json_schema())
    assert ours.model_config.get("extra") == theirs.model_config.get("extra") == "forbid"


def _irspack_validate(name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """What irspack's own config class makes of ``params`` (None: it refuses them)."""
    try:
        dumped = recommender_class(name).config_class(**params).model_dump()
    except pydantic.ValidationError:
        return None
    return {key: dumped[key] for key in params}


def _ours(name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return catalogue.validate_parameters(name, params)
    except ValueError:
        return None


_VALUES = st.one_of(
    st.integers(-5, 500),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
    st.sampled_from(["10", "0.5", "x", "true", "no", "CG", "CHOLESKY", "ORIGINAL", "NONE", ""]),
)
_EVERY_PARAMETER = sorted({p for fields in catalogue.PARAMETERS.values() for p in fields})


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(catalogue.PARAMETERS)),
    params=st.dictionaries(st.sampled_from([*_EVERY_PARAMETER, "n_component"]), _VALUES),
)
def test_it_accepts_coerces_and_refuses_what_irspack_does(
    name: str, params: dict[str, Any]
) -> None:
    assert _ours(name, params) == _irspack_validate(name, params)


def test_a_refusal_names_the_parameter_and_what_is_allowed() -> None:
    with pytest.raises(ValueError) as refused:
        catalogue.validate_parameters("IALS", {"n_component": 8, "reg": "x"})
    message = str(refused.value)
    assert message.startswith("invalid parameters for IALSRecommender: ")
    assert "reg: Input should be a valid number" in message
    assert "n_component: unknown parameter for IALSRecommender (allowed: alpha0," in message


def test_short_names_and_unknown_names() -> None:
    assert catalogue.canonical_name("IALS") == "IALSRecommender"
    assert catalogue.canonical_name("TopPopRecommender") == "TopPopRecommender"
    with pytest.raises(catalogue.UnknownRecommenderError) as unknown:
        catalogue.canonical_name("DeepMagic")
    assert "IALSRecommender" in unknown.value.available
    assert set(catalogue.DEFAULT_ALGORITHMS) <= set(catalogue.PARAMETERS)


def test_using_the_catalogue_loads_no_part_of_the_ml_stack() -> None:
    """In a fresh interpreter: names, checks and defaults without irspack, numpy and friends."""
    script = (
        "import sys\n"
        "from recotem.ml import catalogue\n"
        "catalogue.validate_parameters('IALS', {'n_components': '8'})\n"
        "catalogue.available_recommenders()\n"
        "loaded = {'irspack', 'numba', 'scipy', 'optuna', 'numpy', 'pandas'} & set(sys.modules)\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
