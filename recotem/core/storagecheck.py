"""Is the configured storage usable? Asked once at start-up, before a process takes work.

A worker that cannot reach the bucket would accept tasks and fail each one late (after a
training); a clear line at start names the bucket and endpoint to fix instead.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.files.storage import default_storage


def _s3_options() -> dict[str, Any]:
    options: dict[str, Any] = settings.STORAGES["default"].get("OPTIONS") or {}
    return options


def storage_problem() -> str | None:
    """One line saying why the S3 bucket cannot be used, or None (also None on local storage)."""
    if settings.RECOTEM_STORAGE != "s3":
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    options = _s3_options()
    bucket = options.get("bucket_name") or ""
    endpoint = options.get("endpoint_url") or "the AWS default endpoint"
    if not bucket:
        return "RECOTEM_STORAGE=s3 needs RECOTEM_S3_BUCKET (the bucket's name)"
    try:
        client = default_storage.connection.meta.client  # type: ignore[attr-defined]
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "error"
        why = {
            "404": "does not exist",
            "NoSuchBucket": "does not exist",
            "403": "refuses these credentials",
        }.get(code, f"answered {code} {error.get('Message', '')}".rstrip())
        return f"S3 bucket {bucket!r} at {endpoint} {why}"
    except (BotoCoreError, OSError) as exc:
        return f"S3 bucket {bucket!r} at {endpoint} is unreachable: {exc}"
    return None


@checks.register("storage")
def check_storage(**_: Any) -> list[checks.CheckMessage]:
    problem = storage_problem()
    return [checks.Error(problem, id="recotem.E001")] if problem else []
