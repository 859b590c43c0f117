"""The inference API: a raw ASGI app (no framework) so a prediction costs little more than
parsing its JSON body.

Design (why it is fast and safe):
- Nothing on a warm request touches the database. API keys are cached by their keyed hash,
  slot routing and loaded models live in memory, and one background task per process polls
  `deployment.RoutingVersion` about once a second (in a worker thread) and, when it moved,
  reloads the routing table, loads new models in a thread, then swaps the table in one
  assignment: requests in flight finish on the old model, the next ones use the new one.
- A model that fails to load (bad signature, missing file) is logged, counted and shown in
  /health; its slot keeps serving the model it served before.
- Known users are answered from each model's precomputed top-K (recotem.ml.recommend); the
  serialized item list is memoised per (user, cutoff), so a repeated request is a dict hit.

Endpoints (also under the /inference prefix, which is how recotem.asgi mounts it):
  POST /predict/{model_id}             {"user_id", "cutoff"?, "allowed_item_ids"?, "excluded_item_ids"?, "metadata_fields"?}
  POST /predict/{model_id}/batch       {"user_ids": [...], "cutoff"?}
  POST /predict/{model_id}/profile     {"item_ids": [...], "cutoff"?, "exclude_seen"?, ...}
  POST /predict/project/{project_id}[/batch|/profile]   same bodies, routed by slot weight
  GET  /health, GET /metrics
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")
import django  # noqa: E402
from django.apps import apps as django_apps  # noqa: E402
from django.db import connections  # noqa: E402

if not django_apps.ready:
    django.setup()

from recotem.accounts.keys import KEY_PREFIX, key_hasher  # noqa: E402
from recotem.inference import db  # noqa: E402
from recotem.inference.metrics import Metrics  # noqa: E402
from recotem.ml.recommend import ColdStartUnsupportedError, UnknownUserError  # noqa: E402

logger = logging.getLogger("recotem.inference")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 1024 * 1024
MAX_CUTOFF = 1000
MAX_USERS_PER_BATCH = 10_000
MAX_ITEMS_PER_PROFILE = 10_000
MISS_POLL_INTERVAL = 0.25  # seconds between on-demand polls for projects without a known route
KEY_TTL = 60.0  # a cached key is re-read at least this often (and on every routing change)
NEGATIVE_KEY_TTL = 5.0
META_TTL = 30.0
FULL_RESYNC = 30.0  # also reload when nothing was signalled, to catch bulk updates
LOAD_RETRY = 30.0  # a model that failed to load is retried after this long
LAST_USED_FLUSH = 30.0
MEMO_MAX = 50_000  # serialized answers kept per model (~30 MB at most)

_JSON = [(b"content-type", b"application/json")]
_KINDS = {"": "", "batch": "_batch", "profile": "_profile"}


class HTTPError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail


class ModelUnavailable(Exception):
    pass


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Served:
    """A loaded model ready to serve, with its serialized answers memoised."""

    __slots__ = ("model_id", "project_id", "loaded", "memo", "loaded_at")

    def __init__(self, model_id: int, project_id: int, loaded: Any) -> None:
        self.model_id = model_id
        self.project_id = project_id
        self.loaded = loaded
        self.memo: dict[tuple[str, int], bytes] = {}
        self.loaded_at = time.time()

    def items_json(self, user_id: str, cutoff: int) -> bytes:
        key = (user_id, cutoff)
        cached = self.memo.get(key)
        if cached is None:
            recs = self.loaded.recommend(user_id, cutoff=cutoff)
            cached = orjson.dumps([{"item_id": i, "score": s} for i, s in recs])
            if len(self.memo) >= MEMO_MAX:
                self.memo.clear()
            self.memo[key] = cached
        return cached


@dataclass(slots=True)
class RouteSlot:
    slot_id: int
    name: str
    served: Served
    suffix: bytes  # `,"slot_id":..,"slot_name":..` pre-serialized


class Route:
    """Active slots of one project with cumulative weights for a weighted random pick."""

    __slots__ = ("slots", "cumulative", "total")

    def __init__(self, slots: list[tuple[RouteSlot, int]]) -> None:
        self.slots = [s for s, _ in slots]
        self.cumulative: list[int] = []
        total = 0
        for _, weight in slots:
            total += weight
            self.cumulative.append(total)
        self.total = total

    def pick(self) -> RouteSlot:
        if len(self.slots) == 1:
            return self.slots[0]
        return self.slots[bisect_right(self.cumulative, random.random() * self.total)]


# --- request body validation ---------------------------------------------------------------


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(422, {"body": ["Invalid JSON."]}) from None
    if not isinstance(payload, dict):
        raise HTTPError(422, {"body": ["Expected a JSON object."]})
    return payload


def _id(value: Any, field: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise HTTPError(422, {field: ["Must be a non-empty string or an integer."]})


def _cutoff(payload: dict[str, Any]) -> int:
    value = payload.get("cutoff", 10)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CUTOFF:
        raise HTTPError(422, {"cutoff": [f"Must be an integer from 1 to {MAX_CUTOFF}."]})
    return value


def _id_list(payload: dict[str, Any], field: str, *, required: bool = False, limit: int = 100_000) -> list[str] | None:
    value = payload.get(field)
    if value is None:
        if required:
            raise HTTPError(422, {field: ["This field is required."]})
        return None
    if not isinstance(value, list) or len(value) > limit:
        raise HTTPError(422, {field: [f"Must be a list of at most {limit} ids."]})
    return [_id(v, field) for v in value]


def _fields(payload: dict[str, Any]) -> list[str] | None:
    value = payload.get("metadata_fields")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 100:
        raise HTTPError(422, {"metadata_fields": ["Must be a list of column names."]})
    return value


def _bool(payload: dict[str, Any], field: str, default: bool) -> bool:
    value = payload.get(field, default)
    if not isinstance(value, bool):
        raise HTTPError(422, {field: ["Must be true or false."]})
    return value


def _items(recs: list[tuple[str, float]], meta: db.ItemMetadata | None, fields: list[str] | None) -> list[dict[str, Any]]:
    if meta is None or not fields:
        return [{"item_id": i, "score": s} for i, s in recs]
    rows = meta.rows
    return [
        {"item_id": i, "score": s, "metadata": {f: (rows.get(i) or {}).get(f) for f in fields}}
        for i, s in recs
    ]


# --- the app --------------------------------------------------------------------------------


class InferenceApp:
    def __init__(self) -> None:
        self.poll_interval = _env_float("RECOTEM_INFERENCE_POLL_SECONDS", 1.0)
        self.cache_size = int(_env_float("RECOTEM_INFERENCE_MODEL_CACHE", 8))
        self.hash_key = key_hasher()
        self.metrics = Metrics()
        # One thread each: a DB thread keeps one connection (closed again in stop()), and model
        # loads happen one at a time so a burst of swaps cannot use all cores.
        self.db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recotem-inference-db")
        self.load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recotem-inference-load")
        self.keys: dict[str, tuple[db.KeyEntry | None, float]] = {}
        self.raw_hashes: dict[str, str] = {}
        self.metas: dict[int, tuple[db.ModelMeta | None, float]] = {}
        self.models: OrderedDict[int, Served] = OrderedDict()
        self.load_errors: dict[int, tuple[str, float]] = {}
        self.item_meta: dict[int, tuple[db.ItemMetadata, float]] = {}
        self.routing: dict[int, Route] = {}
        self.last_miss_poll = 0.0
        self.slot_models: dict[int, int] = {}
        self.version: int | None = None
        self.used_keys: set[int] = set()
        self.inflight: dict[Any, asyncio.Future[Any]] = {}
        self.poller: asyncio.Task[None] | None = None
        self.ready: asyncio.Event | None = None
        self.last_poll_ok: float | None = None
        self.last_poll_error = ""
        self.last_full_sync = 0.0
        self.last_flush = time.monotonic()

    # -- background work ----------------------------------------------------------------------

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _once(self, key: Any, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Run `factory` once for concurrent callers asking for the same `key`."""
        future = self.inflight.get(key)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            result = await factory()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self.inflight.pop(key, None)

    def start(self) -> None:
        if self.poller is None:
            self.ready = asyncio.Event()
            self.poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def ensure_started(self) -> None:
        if self.poller is None:
            self.start()
        assert self.ready is not None
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), timeout=10)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
            try:
                await self.poller
            except (asyncio.CancelledError, Exception):
                pass
            self.poller = None
        try:
            await self._flush_last_used()
        except Exception:  # the database may be gone at shutdown
            logger.warning("could not record last_used_at at shutdown", exc_info=True)
        for pool in (self.db_pool, self.load_pool):
            try:
                await self._run(pool, connections.close_all)
            except RuntimeError:  # already shut down
                pass
            pool.shutdown(wait=True)

    async def _poll_forever(self) -> None:
        assert self.ready is not None
        while True:
            try:
                await self.poll_once()
                self.last_poll_ok = time.time()
                self.last_poll_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_poll_error = f"{type(exc).__name__}: {exc}"
                logger.exception("inference poll failed; serving the last known routing")
            self.ready.set()
            await asyncio.sleep(self.poll_interval)

    async def poll_once(self) -> None:
        version = await self._run(self.db_pool, db.routing_version)
        now = time.monotonic()
        if version != self.version or now - self.last_full_sync > FULL_RESYNC:
            await self.reload_routing()
            await self.refresh_keys()
            self.metas.clear()
            self.version = version
            self.last_full_sync = now
            self.metrics.gauges["routing_version"] = version
        if now - self.last_flush > LAST_USED_FLUSH:
            await self._flush_last_used()

    async def _flush_last_used(self) -> None:
        self.last_flush = time.monotonic()
        ids, self.used_keys = list(self.used_keys), set()
        if ids:
            await self._run(self.db_pool, db.touch_keys, ids)

    async def refresh_keys(self) -> None:
        hashes = [h for h, (entry, _) in self.keys.items() if entry is not None]
        if not hashes:
            return
        fresh = await self._run(self.db_pool, db.fetch_keys, hashes)
        now = time.monotonic()
        keys = {h: v for h, v in self.keys.items() if v[0] is None}
        for h, entry in fresh.items():
            keys[h] = (entry, now + (KEY_TTL if entry else NEGATIVE_KEY_TTL))
        self.keys = keys

    async def reload_routing(self) -> None:
        """Load every model the active slots need, then swap the routing table in one step."""
        slots = await self._run(self.db_pool, db.active_slots)
        needed = sorted({s.trained_model_id for s in slots})
        metas = await self._run(self.db_pool, db.model_metas, needed)
        for model_id in needed:
            meta = metas.get(model_id)
            if meta is not None:
                self.metas[model_id] = (meta, time.monotonic() + META_TTL)
            try:
                await self.get_model(model_id, meta=meta)
            except (ModelUnavailable, HTTPError):
                pass  # reported by get_model; the slot keeps its previous model below
        grouped: dict[int, list[tuple[RouteSlot, int]]] = {}
        slot_models: dict[int, int] = {}
        swaps = 0
        for slot in slots:
            served = self.models.get(slot.trained_model_id)
            if served is None:
                previous = self.slot_models.get(slot.id)
                served = self.models.get(previous) if previous is not None else None
                if served is None:
                    logger.error("slot %s (%s) has no loadable model; not routing to it", slot.id, slot.name)
                    continue
                logger.warning("slot %s keeps serving model #%s: model #%s failed to load",
                               slot.id, served.model_id, slot.trained_model_id)
            if self.slot_models.get(slot.id) not in (None, served.model_id):
                swaps += 1
            slot_models[slot.id] = served.model_id
            suffix = b',"slot_id":' + str(slot.id).encode() + b',"slot_name":' + orjson.dumps(slot.name)
            grouped.setdefault(slot.project_id, []).append((RouteSlot(slot.id, slot.name, served, suffix), slot.weight))
        self.routing = {pid: Route(entries) for pid, entries in grouped.items()}
        self.slot_models = slot_models
        self.metrics.swaps += swaps
        self._evict()

    def _evict(self) -> None:
        pinned = set(self.slot_models.values())
        for model_id in list(self.models):
            if len(self.models) <= self.cache_size:
                break
            if model_id not in pinned:
                del self.models[model_id]
        self.metrics.gauges["models_loaded"] = len(self.models)

    async def get_meta(self, model_id: int) -> db.ModelMeta | None:
        cached = self.metas.get(model_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]

        async def fetch() -> db.ModelMeta | None:
            metas = await self._run(self.db_pool, db.model_metas, [model_id])
            meta = metas.get(model_id)
            ttl = META_TTL if meta is not None and meta.completed else NEGATIVE_KEY_TTL
            self.metas[model_id] = (meta, time.monotonic() + ttl)
            return meta

        return await self._once(("meta", model_id), fetch)

    async def get_model(self, model_id: int, meta: db.ModelMeta | None = None) -> Served:
        served = self.models.get(model_id)
        if served is not None:
            self.models.move_to_end(model_id)
            return served
        failed = self.load_errors.get(model_id)
        if failed is not None and time.monotonic() - failed[1] < LOAD_RETRY:
            raise ModelUnavailable(failed[0])
        if meta is None:
            meta = await self.get_meta(model_id)
        if meta is None or not meta.completed:
            raise HTTPError(404, "Unknown model, or the model has not finished training.")

        async def load() -> Served:
            try:
                loaded = await self._run(self.load_pool, db.load_model, meta)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                self.load_errors[model_id] = (message, time.monotonic())
                self.metrics.model_loads["error"] += 1
                logger.error("model #%s failed to load: %s", model_id, message)
                raise ModelUnavailable(message) from None
            self.load_errors.pop(model_id, None)
            self.metrics.model_loads["ok"] += 1
            served = Served(model_id, meta.project_id, loaded)
            self.models[model_id] = served
            self._evict()
            return served

        return await self._once(("model", model_id), load)

    async def get_item_meta(self, project_id: int) -> db.ItemMetadata:
        cached = self.item_meta.get(project_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]

        async def fetch() -> db.ItemMetadata:
            if cached is not None:
                latest = await self._run(self.db_pool, db.latest_item_metadata_id, project_id)
                if latest == cached[0].id:
                    self.item_meta[project_id] = (cached[0], time.monotonic() + META_TTL)
                    return cached[0]
            meta = await self._run(self.load_pool, db.load_item_metadata, project_id)
            self.item_meta[project_id] = (meta, time.monotonic() + META_TTL)
            return meta

        return await self._once(("item_meta", project_id), fetch)

    # -- auth ----------------------------------------------------------------------------------

    async def authenticate(self, scope: Scope) -> db.KeyEntry:
        raw = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                raw = value.decode("latin-1").strip()
                break
        if not raw:
            raise HTTPError(401, "Missing X-API-Key header.")
        if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
            raise HTTPError(401, "Invalid, expired or revoked API key.")
        # The keyed hash costs more than the rest of a cached request; memoise it per raw key
        # (only keys that were valid once are remembered, so junk keys cannot grow this).
        key_hash = self.raw_hashes.get(raw)
        if key_hash is None:
            key_hash = self.hash_key(raw)
        cached = self.keys.get(key_hash)
        if cached is not None and cached[1] > time.monotonic():
            entry = cached[0]
        else:
            async def fetch() -> db.KeyEntry | None:
                found = (await self._run(self.db_pool, db.fetch_keys, [key_hash]))[key_hash]
                if len(self.keys) > 100_000:  # bound memory under a flood of bad keys
                    self.keys = {h: v for h, v in self.keys.items() if v[0] is not None}
                self.keys[key_hash] = (found, time.monotonic() + (KEY_TTL if found else NEGATIVE_KEY_TTL))
                return found

            entry = await self._once(("key", key_hash), fetch)
        if entry is None or (entry.expires_ts is not None and entry.expires_ts <= time.time()):
            raise HTTPError(401, "Invalid, expired or revoked API key.")
        if "predict" not in entry.scopes:
            raise HTTPError(403, "This API key lacks the 'predict' scope.")
        if raw not in self.raw_hashes:
            if len(self.raw_hashes) > 10_000:
                self.raw_hashes.clear()
            self.raw_hashes[raw] = key_hash
        self.used_keys.add(entry.id)
        return entry

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await self.ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        if path.startswith("/inference"):
            path = path[10:]
        parts = path.strip("/").split("/")
        endpoint = "other"
        status = 200
        headers = _JSON
        try:
            if self.poller is None or not self.ready or not self.ready.is_set():
                await self.ensure_started()
            method = scope["method"]
            head = parts[0]
            if head == "predict" and len(parts) >= 2:
                project = parts[1] == "project"
                rest = parts[2:] if project else parts[1:]
                kind = rest[1] if len(rest) == 2 else ""
                if not rest or len(rest) > 2 or kind not in _KINDS:
                    raise HTTPError(404, "Not found.")
                endpoint = ("project" if project else "predict") + _KINDS[kind]
                if method != "POST":
                    raise HTTPError(405, "Method not allowed.")
                if project:
                    body = await self.predict_project(scope, receive, rest[0], kind)
                else:
                    body = await self.predict_model(scope, receive, rest[0], kind)
            elif head == "health" and len(parts) == 1:
                endpoint, body = "health", self.health()
            elif head == "metrics" and len(parts) == 1:
                endpoint, body = "metrics", self.metrics.render()
                headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            else:
                raise HTTPError(404, "Not found.")
        except HTTPError as exc:
            status = exc.status
            body = orjson.dumps({"detail": exc.detail} if isinstance(exc.detail, str) else exc.detail)
        except ModelUnavailable:
            status = 503
            body = b'{"detail":"The model could not be loaded; see /inference/health."}'
        except Exception:  # a bug, not bad input: log it and answer like a server should
            logger.exception("inference request failed")
            status = 500
            body = b'{"detail":"Internal error."}'
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(endpoint, status, time.perf_counter() - start)

    async def read_body(self, receive: Receive) -> bytes:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "Client disconnected.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise HTTPError(413, "Request body too large.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def predict_model(self, scope: Scope, receive: Receive, raw_id: str, kind: str) -> bytes:
        key = await self.authenticate(scope)
        try:
            model_id = int(raw_id)
        except ValueError:
            raise HTTPError(404, "Unknown model.") from None
        meta = await self.get_meta(model_id)
        if meta is None or not meta.completed:
            raise HTTPError(404, "Unknown model, or the model has not finished training.")
        if meta.project_id != key.project_id:
            raise HTTPError(403, "This API key belongs to another project.")
        payload = _parse(await self.read_body(receive))
        served = await self.get_model(model_id, meta=meta)
        return await self.answer(kind, served, payload, b"")

    async def predict_project(self, scope: Scope, receive: Receive, raw_id: str, kind: str) -> bytes:
        key = await self.authenticate(scope)
        try:
            project_id = int(raw_id)
        except ValueError:
            raise HTTPError(404, "Unknown project.") from None
        if project_id != key.project_id:
            raise HTTPError(403, "This API key belongs to another project.")
        route = self.routing.get(project_id)
        if route is None:
            # A slot deployed a moment ago should not 404 until the next poll: look once now
            # (shared by concurrent callers, at most every MISS_POLL_INTERVAL).
            if time.monotonic() - self.last_miss_poll > MISS_POLL_INTERVAL:
                self.last_miss_poll = time.monotonic()
                await self._once(("poll",), self.poll_once)
                route = self.routing.get(project_id)
            if route is None:
                raise HTTPError(404, "This project has no active deployment slot.")
        payload = _parse(await self.read_body(receive))
        chosen = route.pick()
        return await self.answer(kind, chosen.served, payload, chosen.suffix)

    async def answer(self, kind: str, served: Served, payload: dict[str, Any], suffix: bytes) -> bytes:
        tail = (b',"model_id":' + str(served.model_id).encode() + b',"request_id":"'
                + os.urandom(8).hex().encode() + b'"' + suffix + b"}")
        cutoff = _cutoff(payload)
        loaded = served.loaded
        if kind == "":
            user_id = _id(payload.get("user_id"), "user_id")
            allowed = _id_list(payload, "allowed_item_ids")
            excluded = _id_list(payload, "excluded_item_ids")
            fields = _fields(payload)
            try:
                if allowed is None and excluded is None and fields is None:
                    return b'{"items":' + served.items_json(user_id, cutoff) + tail
                recs = loaded.recommend(user_id, cutoff=cutoff, allowed_item_ids=allowed, excluded_item_ids=excluded)
            except UnknownUserError:
                raise HTTPError(404, f"User {user_id!r} is not in the model.") from None
            meta = await self._metadata(served, fields)
            return b'{"items":' + orjson.dumps(_items(recs, meta, fields)) + tail
        if kind == "batch":
            user_ids = _id_list(payload, "user_ids", required=True, limit=MAX_USERS_PER_BATCH)
            assert user_ids is not None
            results = []
            for uid in user_ids:
                try:
                    results.append(b'{"user_id":' + orjson.dumps(uid) + b',"items":' + served.items_json(uid, cutoff) + b"}")
                except UnknownUserError:
                    results.append(b'{"user_id":' + orjson.dumps(uid) + b',"items":[]}')
            return b'{"results":[' + b",".join(results) + b"]" + tail
        # profile: a user who is not in the model, described by the items they interacted with
        item_ids = _id_list(payload, "item_ids", required=True, limit=MAX_ITEMS_PER_PROFILE)
        allowed = _id_list(payload, "allowed_item_ids")
        excluded = _id_list(payload, "excluded_item_ids")
        exclude_seen = _bool(payload, "exclude_seen", True)
        fields = _fields(payload)
        try:
            recs = loaded.recommend_for_profile(
                item_ids or [], cutoff=cutoff, allowed_item_ids=allowed,
                excluded_item_ids=excluded, exclude_seen=exclude_seen,
            )
        except ColdStartUnsupportedError as exc:
            raise HTTPError(422, {"item_ids": [str(exc)]}) from None
        meta = await self._metadata(served, fields)
        return b'{"items":' + orjson.dumps(_items(recs, meta, fields)) + tail

    async def _metadata(self, served: Served, fields: list[str] | None) -> db.ItemMetadata | None:
        if not fields:
            return None
        meta = await self.get_item_meta(served.project_id)
        if meta.id is None:
            raise HTTPError(422, {"metadata_fields": ["This project has no item metadata."]})
        unknown = [f for f in fields if f not in meta.columns]
        if unknown:
            raise HTTPError(422, {"metadata_fields": [f"Unknown column(s) {unknown}; available: {list(meta.columns)}."]})
        return meta

    def health(self) -> bytes:
        now = time.time()
        stale = self.last_poll_ok is None or now - self.last_poll_ok > max(10.0, 5 * self.poll_interval)
        body = {
            "status": "degraded" if stale or self.load_errors else "ok",
            "routing_version": self.version,
            "last_poll_seconds_ago": None if self.last_poll_ok is None else round(now - self.last_poll_ok, 3),
            "poll_error": self.last_poll_error or None,
            "models_loaded": list(self.models),
            "slots": {str(k): v for k, v in self.slot_models.items()},
            "load_errors": {str(k): v[0] for k, v in self.load_errors.items()},
        }
        return orjson.dumps(body)


def build_app() -> InferenceApp:
    return InferenceApp()


application = build_app()
