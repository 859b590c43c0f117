"""The data dir and what Recotem writes into it are readable by their owner only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recotem.testing.processes import process_env


def test_it_creates_and_tightens_the_data_dir(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)  # what earlier versions left behind
    for folder in (old, tmp_path / "new"):
        env = process_env(folder)
        code = (
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='recotem.settings'; "
            "django.setup(); from django.core.management import call_command; "
            "call_command('migrate', verbosity=0)"
        )
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
        assert folder.stat().st_mode & 0o777 == 0o700
        for name in ("db.sqlite3", "secret_key"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, name
        others = [p for p in folder.rglob("*") if p.stat().st_mode & 0o077 and not p.is_symlink()]
        assert others == [], others


def test_it_sets_a_private_umask_in_every_process() -> None:
    current = os.umask(0o022)
    os.umask(current)
    assert current == 0o077  # this test process imported the settings too
