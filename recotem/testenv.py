"""pytest plugin loaded before Django settings (`-p recotem.testenv` in pyproject): test runs
get their own data directory instead of ./recotem-data."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("RECOTEM_DATA_DIR", tempfile.mkdtemp(prefix="recotem-test-"))
