from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from conftest import ML100K, require
from recotem.projects.models import Project


@pytest.fixture(autouse=True)
def _media_root(settings: Any, tmp_path: Path) -> None:
    """Each test stores files in its own folder, so "nothing left behind" can be checked."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def alice(db: Any) -> User:
    return User.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(db: Any) -> User:
    return User.objects.create_user("bob", password="bob-password-1")


def _client_for(user: User) -> APIClient:
    client = APIClient()
    response = client.post(
        "/api/v1/auth/login/",
        {"username": user.username, "password": f"{user.username}-password-1"},
    )
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


@pytest.fixture
def alice_client(alice: User) -> APIClient:
    return _client_for(alice)


@pytest.fixture
def bob_client(bob: User) -> APIClient:
    return _client_for(bob)


@pytest.fixture
def project(alice: User) -> Project:
    return Project.objects.create(
        owner=alice,
        name="movies",
        user_column="user_id",
        item_column="item_id",
        time_column="timestamp",
    )


@pytest.fixture(scope="session")
def ml100k_df() -> pd.DataFrame:
    require(ML100K.exists(), f"MovieLens-100k not found at {ML100K}")
    return pd.read_csv(
        ML100K, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )


@pytest.fixture(scope="session")
def ml100k_csv(ml100k_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u.data written as the CSV a user would upload: header user_id,item_id,rating,timestamp."""
    path = tmp_path_factory.mktemp("ml100k") / "ml100k.csv"
    ml100k_df.to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    rows = ["user_id,item_id,rating,timestamp"]
    for u in range(1, 31):
        for i in range(1, 21):
            if (u * 7 + i * 3) % 4 != 0:
                rows.append(f"{u},{i},{(u + i) % 5 + 1},{1_600_000_000 + u * 100 + i}")
    path = tmp_path / "small.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis for this test session (integration tests use it as their broker)."""
    import shutil

    from recotem.testing.processes import private_redis

    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The private Redis, emptied: leftovers of an earlier test must not be consumed."""
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API server (moto_server) for this test session; its URL."""
    from recotem.testing.processes import moto_server_binary, s3_server

    require(moto_server_binary() is not None, "moto_server is not installed (moto[server])")
    with s3_server(tmp_path_factory.mktemp("s3")) as url:
        yield url


@pytest.fixture
def s3_storage(
    s3_endpoint: str, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, Any]:
    """RECOTEM_STORAGE=s3 for one test: a fresh bucket, a prefix, this test's own cache folder.

    The options come from the same function settings.py uses, from the same variables.
    """
    from recotem import config
    from recotem.testing.processes import S3_TEST_CREDENTIALS, s3_bucket

    bucket = s3_bucket(s3_endpoint)
    for name, value in {
        **S3_TEST_CREDENTIALS,
        "RECOTEM_S3_BUCKET": bucket,
        "RECOTEM_S3_ENDPOINT_URL": s3_endpoint,
        "RECOTEM_S3_PREFIX": "tenant-a/",
    }.items():
        monkeypatch.setenv(name, value)
    settings.RECOTEM_STORAGE = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "recotem.core.s3storage.ImmutableNameS3Storage",
            "OPTIONS": config.s3_options(),
        },
    }
    settings.RECOTEM_CACHE_DIR = tmp_path / "cache"
    return {
        "endpoint": s3_endpoint,
        "bucket": bucket,
        "prefix": "tenant-a",
        "cache": tmp_path / "cache",
    }
