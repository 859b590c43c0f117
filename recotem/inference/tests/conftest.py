from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recotem.inference.app import InferenceApp, build_app
from recotem.inference.testing import build_world


class Client:
    """Drives an in-process InferenceApp on a private event loop.

    The loop runs only inside each call, so the test may use the ORM between calls (Django
    refuses ORM calls from a thread with a running loop). The background poller is slowed down
    and `poll()` runs one poll on demand, which makes swaps deterministic.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.app: InferenceApp = build_app()
        self.app.poll_interval = 3600
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://testserver"
        )

    def post(
        self, path: str, body: Any = None, *, key: str | None = None, content: bytes | None = None
    ) -> httpx.Response:
        headers = {"X-API-Key": key} if key else {}
        request = (
            self.http.post(path, json=body, headers=headers)
            if content is None
            else self.http.post(path, content=content, headers=headers)
        )
        return self.loop.run_until_complete(request)

    def get(
        self, path: str, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        sent = {**(headers or {}), **({"X-API-Key": key} if key else {})}
        return self.loop.run_until_complete(self.http.get(path, headers=sent))

    def many(self, path: str, bodies: list[Any], *, key: str) -> list[httpx.Response]:
        async def run() -> list[httpx.Response]:
            return list(
                await asyncio.gather(
                    *(self.http.post(path, json=b, headers={"X-API-Key": key}) for b in bodies)
                )
            )

        return self.loop.run_until_complete(run())

    def poll(self) -> None:
        self.loop.run_until_complete(self.app.poll_once())

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.run_until_complete(self.app.stop())


@pytest.fixture
def client() -> Iterator[Client]:
    loop = asyncio.new_event_loop()
    c = Client(loop)
    try:
        yield c
    finally:
        c.close()
        loop.close()


@pytest.fixture
def world(transactional_db: Any, small_csv: Path, tmp_path: Path) -> dict[str, Any]:
    """IALS (slot-0, weight 100) and TopPop models of one project, a predict key, item metadata."""
    meta = tmp_path / "items.csv"
    meta.write_text(
        "item_id,title,genre\n" + "".join(f"{i},Movie {i},g{i % 3}\n" for i in range(1, 21))
    )
    return build_world(
        csv=small_csv,
        models=[("IALS", {"n_components": 8}), ("TopPop", {})],
        weights=[100],
        username="alice",
        item_metadata=meta,
    )
