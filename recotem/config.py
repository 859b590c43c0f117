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


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated variable as a list of its non-empty, stripped items.

    Empty counts as unset, as in env_bool/env_int: `RECOTEM_ALLOWED_HOSTS=` (compose passes
    variables that way) must mean the default, not "answer no host at all".
    """
    raw = os.environ.get(name) or default
    return [item.strip() for item in raw.split(",") if item.strip()]


def private_files() -> None:
    """Make every file and folder this process creates readable by its owner only.

    The data dir holds other people's interaction logs, the database (webhook secrets, source
    URLs with passwords) and the secret key; SQLite, the broker and Celery create files with the
    process umask, so the umask is where one rule covers them all.
    """
    os.umask(0o077)


def data_dir() -> Path:
    """Absolute RECOTEM_DATA_DIR (default ./recotem-data), created on first use, mode 0700.

    An existing folder we own is tightened to 0700 too (earlier versions left it 0755).
    """
    path = Path(os.environ.get("RECOTEM_DATA_DIR", "recotem-data")).expanduser().resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError:  # a mount we may not chmod: the folder's owner decides
        pass
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


def s3_options() -> dict[str, object]:
    """django-storages S3Storage options from RECOTEM_S3_* (AWS, MinIO, Ceph, R2...).

    Credentials are not here: boto3 reads the standard AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), its config files or an instance role.
    """
    from botocore.config import Config

    return {
        "bucket_name": os.environ.get("RECOTEM_S3_BUCKET", ""),
        "endpoint_url": os.environ.get("RECOTEM_S3_ENDPOINT_URL") or None,
        "region_name": os.environ.get("RECOTEM_S3_REGION") or None,
        "location": os.environ.get("RECOTEM_S3_PREFIX", "").strip("/"),
        "signature_version": "s3v4",
        # Path-style (endpoint/bucket/key) works without a DNS name per bucket; short connect
        # timeouts turn an unreachable endpoint into a start-up error, not a hung process.
        "client_config": Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
        # No ACL header: objects stay as private as the bucket (ACL-less buckets and R2 refuse
        # ACLs); any URL is signed and short-lived, never a public link.
        "default_acl": None,
        "querystring_auth": True,
        "querystring_expire": 300,
        # Stored names are immutable (a new save gets a new name): that is what lets every
        # machine cache an object by its name (recotem.core.files).
        "file_overwrite": False,
        # A download (file responses) spools to disk beyond this, not all into memory.
        "max_memory_size": 64 * 1024 * 1024,
    }


def default_broker_url() -> str:
    # recotem.broker registers this scheme: kombu's SQLAlchemy transport, polled faster.
    return f"recotemsqla+sqlite:///{data_dir() / 'broker.sqlite3'}"


def broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or default_broker_url()


def broker_is_embedded(url: str) -> bool:
    return url.startswith(("sqla+", "recotemsqla+"))
