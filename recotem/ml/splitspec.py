"""What a split is, as settings: checked by the web process without the ML stack.

`recotem.ml.split` does the splitting (numpy, scipy, irspack); this module holds only the
settings and their rules, so a split configuration can be validated where no model is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scheme = Literal["RG", "TG", "TU"]
SCHEMES: tuple[str, ...] = ("RG", "TG", "TU")


@dataclass(frozen=True)
class SplitSpec:
    """How to hold out interactions.

    ``val_user_ratio``/``n_val_users`` default to the test settings so a
    single "how many users do we evaluate on" knob (``test_user_ratio``)
    keeps working as in earlier Recotem versions.
    """

    scheme: Scheme = "RG"
    heldout_ratio: float = 0.1
    n_heldout: int | None = None
    test_user_ratio: float = 0.1
    n_test_users: int | None = None
    random_seed: int = 42
    val_user_ratio: float | None = None
    n_val_users: int | None = None

    def validate(self) -> None:
        """Raise ValueError with a readable message for inconsistent settings."""
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown split scheme {self.scheme!r}; use one of {SCHEMES}")
        if not 0.0 < self.heldout_ratio < 1.0:
            raise ValueError("heldout_ratio must be strictly between 0 and 1")
        if self.n_heldout is not None and self.n_heldout < 1:
            raise ValueError("n_heldout must be at least 1")
        for name in ("test_user_ratio", "val_user_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("n_test_users", "n_val_users"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.effective_val_ratio + self.test_user_ratio > 1.0:
            raise ValueError("val_user_ratio + test_user_ratio must not exceed 1")
        if self.n_val_users == 0 or (self.n_val_users is None and self.effective_val_ratio == 0):
            raise ValueError("tuning needs validation users: val_user_ratio / n_val_users is 0")

    @property
    def effective_val_ratio(self) -> float:
        return self.test_user_ratio if self.val_user_ratio is None else self.val_user_ratio


def split_spec_from_config(
    *,
    scheme: str = "RG",
    heldout_ratio: float = 0.1,
    n_heldout: int | None = None,
    test_user_ratio: float = 1.0,
    n_test_users: int | None = None,
    final_test_ratio: float = 0.1,
    n_final_test_users: int | None = None,
    random_seed: int = 42,
) -> SplitSpec:
    """The one mapping from Recotem's split settings (a split config) to a :class:`SplitSpec`.

    Tuning, training's holdout score and the retraining gate all split through this function, so
    they agree on which users are scored. The names are Recotem's public ones, kept from the
    older Recotem: ``test_user_ratio`` / ``n_test_users`` say which users' held-out items score
    the *search* (validation users: 1.0 means every user not kept for the final test), and
    ``final_test_ratio`` / ``n_final_test_users`` the users kept out of tuning altogether for the
    final, unbiased test score (0: none). A fixed validation-user count keeps the validation set
    the same size as the data grows.
    """
    val_ratio = None if n_test_users is not None else (1.0 - final_test_ratio) * test_user_ratio
    return SplitSpec(
        scheme=scheme,  # type: ignore[arg-type]  # checked by SplitSpec.validate
        heldout_ratio=heldout_ratio,
        n_heldout=n_heldout,
        test_user_ratio=final_test_ratio,
        n_test_users=n_final_test_users,
        val_user_ratio=val_ratio,
        n_val_users=n_test_users,
        random_seed=random_seed,
    )
