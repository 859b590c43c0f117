"""Test set-up shared by every test package.

Tests that need something from outside (PostgreSQL, Redis, Chromium, the ml-100k data set) skip
with a clear reason when it is absent, unless RECOTEM_REQUIRE_SERVICES=1 (set by .ci/run), which
turns those skips into failures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent


def _shared_data() -> Path:
    """``shared/data`` beside the checkout, or beside an ancestor (a git worktree under
    ``/work/wt/<name>`` shares ``/work/shared``)."""
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data"


SHARED_DATA = _shared_data()
ML100K = SHARED_DATA / "ml-100k" / "u.data"


def require(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) when an outside dependency is missing."""
    if condition:
        return
    if os.environ.get("RECOTEM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required by RECOTEM_REQUIRE_SERVICES=1: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import psycopg

        try:
            psycopg.connect(url, connect_timeout=3).close()
        except psycopg.OperationalError as exc:
            if os.environ.get("RECOTEM_REQUIRE_SERVICES") == "1":
                raise pytest.UsageError(
                    f"PostgreSQL is required but unreachable at {url}: {exc}"
                ) from None
            pytest.exit(f"skipped: PostgreSQL unreachable at {url} ({exc})", returncode=0)
