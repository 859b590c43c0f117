"""Environment-driven configuration helpers shared by settings, the CLI and the inference app.

Kept free of Django so the CLI can read them before Django is set up.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def data_dir() -> Path:
    """Absolute RECOTEM_DATA_DIR (default ./recotem-data), created on first use."""
    path = Path(os.environ.get("RECOTEM_DATA_DIR", "recotem-data")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret_key() -> str:
    """SECRET_KEY from the environment, else generated once and persisted in the data dir.

    Every process (web, worker, beat, inference) must agree on it: it signs sessions, JWTs
    and model artifacts. O_EXCL makes the first writer win when processes start together.
    """
    from_env = os.environ.get("SECRET_KEY")
    if from_env:
        return from_env
    key_file = data_dir() / "secret_key"
    if not key_file.exists():
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(50))
    for _ in range(50):
        value = key_file.read_text().strip()
        if value:
            return value
        import time

        time.sleep(0.05)
    raise RuntimeError(f"{key_file} is empty; delete it and start again")


def default_broker_url() -> str:
    # recotem.broker registers this scheme: kombu's SQLAlchemy transport, polled faster.
    return f"recotemsqla+sqlite:///{data_dir() / 'broker.sqlite3'}"


def broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or default_broker_url()


def broker_is_embedded(url: str) -> bool:
    return url.startswith(("sqla+", "recotemsqla+"))
