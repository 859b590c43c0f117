"""An opt-in record of which modules a process imported, for checking that it stays lean.

With ``RECOTEM_DEBUG_MODULES_DIR`` set, a process writes the sorted names of its imported
top-level packages to ``<dir>/<pid>.modules`` when it exits normally (SIGTERM included) and
whenever it receives SIGUSR2 (so a test can ask a running process). Beat and web must never
need irspack, numba, scipy or optuna; the lean-process tests read these files. Off (and free)
unless the variable is set.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path
from types import FrameType

ENV = "RECOTEM_DEBUG_MODULES_DIR"


def _dump(directory: Path) -> None:
    names = sorted({name.split(".", 1)[0] for name in list(sys.modules)})
    target = directory / f"{os.getpid()}.modules"
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(names) + "\n")
    os.replace(tmp, target)  # a reader never sees half a file


def install_from_env() -> None:
    """Register the dump if ``RECOTEM_DEBUG_MODULES_DIR`` names a directory (idempotent)."""
    value = os.environ.get(ENV)
    if not value or getattr(install_from_env, "_installed", False):
        return
    directory = Path(value)
    directory.mkdir(parents=True, exist_ok=True)
    atexit.register(_dump, directory)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        _dump(directory)

    try:
        signal.signal(signal.SIGUSR2, on_signal)
    except ValueError:  # not the main thread: the exit dump still works
        pass
    install_from_env._installed = True  # type: ignore[attr-defined]
