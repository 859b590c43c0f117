"""pytest plugin loaded before Django settings (`-p recotem.testenv` in pyproject): test runs
get their own data directory instead of ./recotem-data."""

from __future__ import annotations

import os
import tempfile

# pytest-xdist workers inherit the controller's environment: each gets a data dir of its own, so
# files one worker's tests create or delete never meet another's.
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker or "RECOTEM_DATA_DIR" not in os.environ:
    os.environ["RECOTEM_DATA_DIR"] = tempfile.mkdtemp(prefix=f"recotem-test-{_worker or 'main'}-")
