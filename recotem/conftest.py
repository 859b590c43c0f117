from __future__ import annotations

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
        "/api/v1/auth/login/", {"username": user.username, "password": f"{user.username}-password-1"}
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
        owner=alice, name="movies", user_column="user_id", item_column="item_id", time_column="timestamp"
    )


@pytest.fixture(scope="session")
def ml100k_df() -> pd.DataFrame:
    require(ML100K.exists(), f"MovieLens-100k not found at {ML100K}")
    return pd.read_csv(ML100K, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"])


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
