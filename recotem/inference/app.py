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
- Known users are answered from each model's top-K, kept from a user's first request on
  (recotem.ml.recommend); the serialized item list is memoised per (model, user, cutoff) in
  one LRU per process bounded in bytes (RECOTEM_INFERENCE_CACHE_MB, recotem.inference.cache), for cutoffs the top-K covers.
- A key of another project is told exactly what a missing object tells (404): ids of other
  tenants cannot be probed. /health without credentials says only {"status"}; its details
  (model ids, load errors) need an API key (its project's only) or RECOTEM_METRICS_TOKEN, which
  /metrics requires when set.

Endpoints (also under the /inference prefix, which is how recotem.asgi mounts it):
  POST /predict/{model_id}             {"user_id", "cutoff"?, "allowed_item_ids"?, "excluded_item_ids"?, "metadata_fields"?}
  POST /predict/{model_id}/batch       {"user_ids": [...], "cutoff"?}
  POST /predict/{model_id}/profile     {"item_ids": [...], "cutoff"?, "exclude_seen"?, ...}
  POST /predict/project/{project_id}[/batch|/profile]   same bodies, routed by slot weight
  POST /events                         {"events": [{"type", "user_id", "item_id", ...}]}
  GET  /health, GET /metrics

Routing is sticky: a project's users are assigned to its slots by a stable hash of (user id,
the project's assignment salt) against the slot weights (recotem.lib.assignment), so a user
keeps their slot while the weights stay the same. Every answer's ``request_id`` is a signed
token naming the project, slot, model and experiment arm that served it
(recotem.lib.signing.RequestTokens): feedback events carrying it are attributed exactly without
any write per prediction.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")
import django  # noqa: E402
from django.apps import apps as django_apps  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connections  # noqa: E402

if not django_apps.ready:
    django.setup()

from recotem.accounts.keys import KEY_PREFIX, key_hasher  # noqa: E402
from recotem.core.artifacts import request_tokens  # noqa: E402
from recotem.core.exceptions import InvalidInput  # noqa: E402
from recotem.experiments.services import ProjectGone  # noqa: E402
from recotem.inference import db  # noqa: E402
from recotem.inference.cache import AnswerCache  # noqa: E402
from recotem.inference.metrics import Metrics  # noqa: E402
from recotem.lib import assignment  # noqa: E402
from recotem.lib.signing import ServedBy  # noqa: E402
from recotem.ml.data import InteractionDataError  # noqa: E402
from recotem.ml.recommend import ColdStartUnsupportedError, UnknownUserError  # noqa: E402

logger = logging.getLogger("recotem.inference")

_T = TypeVar("_T")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 1024 * 1024
MAX_CUTOFF = 1000
MAX_USERS_PER_BATCH = 10_000
MAX_BATCH_ITEMS = 100_000  # users x cutoff of one batch: bounds the work and the response size
MAX_ID = 2**63 - 1  # the largest database id; anything beyond names nothing
MAX_ITEMS_PER_PROFILE = 10_000
MISS_POLL_INTERVAL = 0.25  # seconds between on-demand polls for projects without a known route
KEY_TTL = 60.0  # a cached key is re-read at least this often (and on every routing change)
NEGATIVE_KEY_TTL = 5.0
META_TTL = 30.0
FULL_RESYNC = 30.0  # also reload when nothing was signalled, to catch bulk updates
LOAD_RETRY = 30.0  # a model that failed to load is retried after this long
LAST_USED_FLUSH = 30.0
ITEM_META_CACHE = 8  # projects whose item metadata a process keeps in memory
EVENT_THREADS = 2  # event batches stored at once per process (each thread keeps a connection)

_NOSNIFF = (b"x-content-type-options", b"nosniff")
_JSON = [(b"content-type", b"application/json"), _NOSNIFF]
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
    """A loaded model ready to serve; its serialized answers go to the process's AnswerCache."""

    __slots__ = ("model_id", "project_id", "loaded", "memo", "loaded_at", "memo_cutoff")

    def __init__(self, model_id: int, project_id: int, loaded: Any, memo: AnswerCache) -> None:
        self.model_id = model_id
        self.project_id = project_id
        self.loaded = loaded
        self.memo = memo
        # Larger cutoffs take the live path on every request; memoising them would only let
        # varied cutoffs fill the cache with answers that are cheap to lose.
        self.memo_cutoff = int(getattr(loaded, "precompute_k", 0) or 0)
        self.loaded_at = time.time()

    def items_json(self, user_id: str, cutoff: int) -> bytes:
        if cutoff > self.memo_cutoff:
            recs = self.loaded.recommend(user_id, cutoff=cutoff)
            return orjson.dumps([{"item_id": i, "score": s} for i, s in recs])
        key = (self.model_id, user_id, cutoff)
        cached = self.memo.get(key)
        if cached is None:
            recs = self.loaded.recommend(user_id, cutoff=cutoff)
            cached = orjson.dumps([{"item_id": i, "score": s} for i, s in recs])
            self.memo.put(key, cached)
        return cached


@dataclass(slots=True)
class RouteSlot:
    slot_id: int
    name: str
    served: Served
    suffix: bytes  # `,"slot_id":..,"slot_name":..` pre-serialized
    experiment_id: int = 0  # the running experiment this slot is an arm of (0: none)
    arm: str = ""
    token_prefix: str = ""  # the fixed part of this slot's request ids (RequestTokens.prefix)


class Route:
    """Active slots of one project with cumulative weights for a sticky weighted pick."""

    __slots__ = ("slots", "cumulative", "position")

    def __init__(self, slots: list[tuple[RouteSlot, int]], salt: str) -> None:
        self.slots = [s for s, _ in slots]
        self.cumulative = assignment.cumulative([w for _, w in slots])
        self.position = assignment.Positions(salt)

    def pick(self, user_id: str | None) -> RouteSlot:
        """The user's sticky slot; a request without a user (a bare profile) is placed at
        random, as there is nobody to keep on one slot."""
        if len(self.slots) == 1:
            return self.slots[0]
        at = random.random() if user_id is None else self.position(user_id)
        return self.slots[assignment.pick(self.cumulative, at)]


# --- request body validation ---------------------------------------------------------------


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(422, {"body": ["Invalid JSON."]}) from None
    if not isinstance(payload, dict):
        raise HTTPError(422, {"body": ["Expected a JSON object."]})
    return payload


def _path_id(raw: str) -> int | None:
    """A database id from the URL: plain digits within the id range, else None (a 404)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_ID else None


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


def _id_list(
    payload: dict[str, Any], field: str, *, required: bool = False, limit: int = 100_000
) -> list[str] | None:
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
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) for v in value)
        or len(value) > 100
    ):
        raise HTTPError(422, {"metadata_fields": ["Must be a list of column names."]})
    return value


def _bool(payload: dict[str, Any], field: str, default: bool) -> bool:
    value = payload.get(field, default)
    if not isinstance(value, bool):
        raise HTTPError(422, {field: ["Must be true or false."]})
    return value


def _items(
    recs: list[tuple[str, float]], meta: db.ItemMetadata | None, fields: list[str] | None
) -> list[dict[str, Any]]:
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
        self.tokens = request_tokens()
        self.metrics = Metrics()
        self.memo = AnswerCache(int(settings.RECOTEM_INFERENCE_CACHE_MB) * 2**20)
        self.metrics_token = str(getattr(settings, "RECOTEM_METRICS_TOKEN", "") or "")
        # One thread each: a DB thread keeps one connection (closed again in stop()), and model
        # loads happen one at a time so a burst of swaps cannot use all cores.
        self.db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recotem-inference-db")
        self.load_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="recotem-inference-load"
        )
        # Event batches get their own threads (and connections): a burst of writes must not
        # delay the routing poll or a cold key look-up, and two batches can commit at once.
        self.events_pool = ThreadPoolExecutor(
            max_workers=EVENT_THREADS, thread_name_prefix="recotem-inference-events"
        )
        self.keys: dict[str, tuple[db.KeyEntry | None, float]] = {}
        self.raw_hashes: dict[str, str] = {}
        self.metas: dict[int, tuple[db.ModelMeta | None, float]] = {}
        self.models: OrderedDict[int, Served] = OrderedDict()
        self.load_errors: dict[int, tuple[str, float, int | None]] = {}
        self.item_meta: OrderedDict[int, tuple[db.ItemMetadata, float]] = OrderedDict()
        self.routing: dict[int, Route] = {}
        self.last_miss_poll = 0.0
        self.slot_models: dict[int, int] = {}
        self.version: int | None = None
        self.used_keys: set[int] = set()
        self.inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self.poller: asyncio.Task[None] | None = None
        self.ready: asyncio.Event | None = None
        self.last_poll_ok: float | None = None
        self.last_poll_error = ""
        self.last_full_sync = 0.0
        self.last_flush = time.monotonic()

    # -- background work ----------------------------------------------------------------------

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _once(self, key: Hashable, factory: Callable[[], Awaitable[_T]]) -> _T:
        """Run `factory` once for concurrent callers asking for the same `key`."""
        # Callers with the same key ask for the same thing, so its future holds a _T.
        future: asyncio.Future[_T] | None = self.inflight.get(key)
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
        for pool, threads in (
            (self.db_pool, 1),
            (self.load_pool, 1),
            (self.events_pool, EVENT_THREADS),
        ):
            # Connections belong to their thread: one close per thread, held at a barrier so
            # that each of the pool's threads runs exactly one of them.
            barrier = threading.Barrier(threads)

            def close(barrier: threading.Barrier = barrier) -> None:
                try:
                    barrier.wait(timeout=10)
                finally:
                    connections.close_all()

            try:
                await asyncio.gather(*(self._run(pool, close) for _ in range(threads)))
            except (RuntimeError, threading.BrokenBarrierError):  # already shut down
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
        self.metrics.gauges["answer_cache_bytes"] = self.memo.bytes
        # Users whose top-K a loaded model keeps: it grows with traffic after a deploy.
        self.metrics.gauges["topk_users"] = sum(
            int(getattr(served.loaded, "kept_top_users", 0)) for served in self.models.values()
        )
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

    def forget_keys_of(self, project_id: int) -> None:
        """Refuse the cached keys of a project that no longer exists until they are re-read."""
        until = time.monotonic() + NEGATIVE_KEY_TTL
        for key_hash, (entry, _) in list(self.keys.items()):
            if entry is not None and entry.project_id == project_id:
                self.keys[key_hash] = (None, until)

    async def reload_routing(self) -> None:
        """Load every model the active slots need, then swap the routing table in one step."""
        slots = await self._run(self.db_pool, db.active_slots)
        salts = await self._run(
            self.db_pool, db.project_salts, sorted({s.project_id for s in slots})
        )
        arms = await self._run(self.db_pool, db.running_arms)
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
                    logger.error(
                        "slot %s (%s) has no loadable model; not routing to it", slot.id, slot.name
                    )
                    continue
                logger.warning(
                    "slot %s keeps serving model #%s: model #%s failed to load",
                    slot.id,
                    served.model_id,
                    slot.trained_model_id,
                )
            if self.slot_models.get(slot.id) not in (None, served.model_id):
                swaps += 1
            slot_models[slot.id] = served.model_id
            suffix = (
                b',"slot_id":' + str(slot.id).encode() + b',"slot_name":' + orjson.dumps(slot.name)
            )
            arm = arms.get(slot.id)
            route_slot = RouteSlot(slot.id, slot.name, served, suffix)
            if arm is not None:
                route_slot.experiment_id, route_slot.arm = arm.experiment_id, arm.arm
            route_slot.token_prefix = self.tokens.prefix(
                ServedBy(
                    slot.project_id,
                    slot.id,
                    served.model_id,
                    route_slot.experiment_id,
                    route_slot.arm,
                )
            )
            grouped.setdefault(slot.project_id, []).append((route_slot, slot.weight))
        self.routing = {pid: Route(entries, salts.get(pid, "")) for pid, entries in grouped.items()}
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
                self.memo.drop_model(model_id)
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
                self.load_errors[model_id] = (message, time.monotonic(), meta.project_id)
                self.metrics.model_loads["error"] += 1
                logger.error("model #%s failed to load: %s", model_id, message)
                raise ModelUnavailable(message) from None
            self.load_errors.pop(model_id, None)
            self.metrics.model_loads["ok"] += 1
            served = Served(model_id, meta.project_id, loaded, self.memo)
            self.models[model_id] = served
            self._evict()
            return served

        return await self._once(("model", model_id), load)

    async def get_item_meta(self, project_id: int) -> db.ItemMetadata:
        """The project's item metadata, read on first use (only requests that ask for
        metadata fields load it) and kept for at most ITEM_META_CACHE projects."""
        cached = self.item_meta.get(project_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            self.item_meta.move_to_end(project_id)
            return cached[0]

        def keep(meta: db.ItemMetadata) -> db.ItemMetadata:
            self.item_meta[project_id] = (meta, time.monotonic() + META_TTL)
            self.item_meta.move_to_end(project_id)
            while len(self.item_meta) > ITEM_META_CACHE:
                self.item_meta.popitem(last=False)
            return meta

        async def fetch() -> db.ItemMetadata:
            if cached is not None:
                latest = await self._run(self.db_pool, db.latest_item_metadata_id, project_id)
                if latest == cached[0].id:
                    return keep(cached[0])
            try:
                meta = await self._run(self.load_pool, db.load_item_metadata, project_id)
            except InteractionDataError as exc:
                raise HTTPError(
                    422, {"metadata_fields": [f"The item metadata cannot be served: {exc}"]}
                ) from None
            return keep(meta)

        return await self._once(("item_meta", project_id), fetch)

    # -- auth ----------------------------------------------------------------------------------

    @staticmethod
    def _header(scope: Scope, wanted: bytes) -> str | None:
        for name, value in scope["headers"]:
            if name == wanted:
                return str(value.decode("latin-1").strip())
        return None

    async def authenticate(self, scope: Scope) -> db.KeyEntry:
        """The request's usable key with the ``predict`` scope (401/403 otherwise)."""
        entry = await self.key_entry(scope)
        if "predict" not in entry.scopes:
            raise HTTPError(403, "This API key lacks the 'predict' scope.")
        return entry

    async def authenticate_events(self, scope: Scope) -> db.KeyEntry:
        """The request's usable key with the ``events`` or the ``predict`` scope."""
        entry = await self.key_entry(scope)
        if "events" not in entry.scopes and "predict" not in entry.scopes:
            raise HTTPError(403, "This API key lacks the 'events' (or 'predict') scope.")
        return entry

    async def key_entry(self, scope: Scope) -> db.KeyEntry:
        """The request's usable key, any scope; 401 when it is missing, unknown or expired."""
        raw = self._header(scope, b"x-api-key")
        if not raw:
            raise HTTPError(401, "Missing X-API-Key header.")
        if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
            raise HTTPError(401, "Invalid, expired or revoked API key.")
        # The keyed hash costs more than the rest of a cached request; memoise it per raw key
        # (only keys that were valid once are remembered, so junk keys cannot grow this).
        key_hash = self.raw_hashes.get(raw)
        candidates: list[str] | None = None
        if key_hash is None:
            candidates = self.hash_key(raw)
            key_hash = candidates[0]
        cached = self.keys.get(key_hash)
        if cached is not None and cached[1] > time.monotonic():
            entry = cached[0]
        else:
            hashes = candidates or self.hash_key(raw)

            async def fetch() -> db.KeyEntry | None:
                # Under the current SECRET_KEY first, then under each fallback; a key found
                # under a fallback is re-hashed so the cache and later look-ups agree.
                rows = await self._run(self.db_pool, db.fetch_keys, hashes)
                found, found_hash = next(
                    ((rows[h], h) for h in hashes if rows.get(h) is not None), (None, None)
                )
                if found is not None and found_hash != key_hash:
                    await self._run(self.db_pool, db.rehash_key, found.id, found_hash, key_hash)
                if len(self.keys) > 100_000:  # bound memory under a flood of bad keys
                    self.keys = {h: v for h, v in self.keys.items() if v[0] is not None}
                self.keys[key_hash] = (
                    found,
                    time.monotonic() + (KEY_TTL if found else NEGATIVE_KEY_TTL),
                )
                return found

            entry = await self._once(("key", key_hash), fetch)
        if entry is None or (entry.expires_ts is not None and entry.expires_ts <= time.time()):
            raise HTTPError(401, "Invalid, expired or revoked API key.")
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
            elif head == "events" and len(parts) == 1:
                endpoint = "events"
                if method != "POST":
                    raise HTTPError(405, "Method not allowed.")
                body = await self.events(scope, receive)
                status = 202
            elif head == "health" and len(parts) == 1:
                endpoint, body = "health", await self.health_for(scope)
                headers = [*_JSON, (b"cache-control", b"no-store")]
            elif head == "metrics" and len(parts) == 1:
                endpoint = "metrics"
                if not self.operator(scope):
                    raise HTTPError(
                        401, "/metrics needs Authorization: Bearer <RECOTEM_METRICS_TOKEN>."
                    )
                body = self.metrics.render()
                headers = [
                    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                    _NOSNIFF,
                ]
            else:
                raise HTTPError(404, "Not found.")
        except HTTPError as exc:
            status = exc.status
            body = orjson.dumps(
                {"detail": exc.detail} if isinstance(exc.detail, str) else exc.detail
            )
        except ModelUnavailable:
            status = 503
            body = b'{"detail":"The model could not be loaded; see /inference/health."}'
        except Exception:  # a bug, not bad input: log it and answer like a server should
            logger.exception("inference request failed")
            status = 500
            body = b'{"detail":"Internal error."}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
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
        model_id = _path_id(raw_id)
        missing = "Unknown model, or the model has not finished training."
        if model_id is None:
            raise HTTPError(404, missing)
        meta = await self.get_meta(model_id)
        # Another project's model is answered like a missing one: ids cannot be probed.
        if meta is None or not meta.completed or meta.project_id != key.project_id:
            raise HTTPError(404, missing)
        payload = _parse(await self.read_body(receive))
        served = await self.get_model(model_id, meta=meta)
        return await self.answer(kind, served, payload, None)

    async def predict_project(
        self, scope: Scope, receive: Receive, raw_id: str, kind: str
    ) -> bytes:
        key = await self.authenticate(scope)
        project_id = _path_id(raw_id)
        if project_id is None or project_id != key.project_id:
            raise HTTPError(404, "Unknown project, or not the project of this API key.")
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
        if kind == "batch":
            return await self.batch_project(route, payload)
        # Sticky: the user's own slot. A profile request may name its user for the same reason.
        user = payload.get("user_id")
        if kind == "":
            user = _id(user, "user_id")
        elif user is not None:
            user = _id(user, "user_id")
        chosen = route.pick(user)
        return await self.answer(kind, chosen.served, payload, chosen)

    def request_id(self, served: Served, slot: RouteSlot | None) -> bytes:
        """The signed token naming what served this answer (recotem.lib.signing)."""
        if slot is not None:
            return self.tokens.sign_prefix(slot.token_prefix).encode()
        by = ServedBy(
            project_id=served.project_id,
            slot_id=slot.slot_id if slot else 0,
            model_id=served.model_id,
            experiment_id=slot.experiment_id if slot else 0,
            arm=slot.arm if slot else "",
        )
        return self.tokens.sign(by).encode()

    def tail(self, served: Served, slot: RouteSlot | None) -> bytes:
        return (
            b',"model_id":'
            + str(served.model_id).encode()
            + b',"request_id":"'
            + self.request_id(served, slot)
            + b'"'
            + (slot.suffix if slot else b"")
        )

    async def batch_project(self, route: Route, payload: dict[str, Any]) -> bytes:
        """A project batch: every user answered by their own sticky slot.

        With one slot (or every user on one slot) the answer is the model batch's. When the
        users span slots, each result also names its ``model_id``, ``request_id``, ``slot_id``
        and ``slot_name``, and the top-level fields are those of the first user's slot.
        """
        cutoff = _cutoff(payload)
        user_ids = self._batch_users(payload, cutoff)
        chosen = [route.pick(uid) for uid in user_ids]
        if len({c.slot_id for c in chosen}) <= 1:
            slot = chosen[0] if chosen else route.pick(None)
            return await self.answer("batch", slot.served, payload, slot)
        by_model: dict[int, tuple[Served, list[str]]] = {}
        for uid, slot in zip(user_ids, chosen, strict=True):
            by_model.setdefault(slot.served.model_id, (slot.served, []))[1].append(uid)
        for served, users in by_model.values():
            served.loaded.warm(users, cutoff)  # first-time users scored together, per model
        results = []
        for uid, slot in zip(user_ids, chosen, strict=True):
            try:
                items = slot.served.items_json(uid, cutoff)
            except UnknownUserError:
                items = b"[]"
            results.append(
                b'{"user_id":'
                + orjson.dumps(uid)
                + b',"items":'
                + items
                + self.tail(slot.served, slot)
                + b"}"
            )
        return (
            b'{"results":['
            + b",".join(results)
            + b"]"
            + self.tail(chosen[0].served, chosen[0])
            + b"}"
        )

    def _batch_users(self, payload: dict[str, Any], cutoff: int) -> list[str]:
        user_ids = _id_list(payload, "user_ids", required=True, limit=MAX_USERS_PER_BATCH)
        assert user_ids is not None
        if len(user_ids) * cutoff > MAX_BATCH_ITEMS:
            raise HTTPError(
                422,
                {
                    "user_ids": [
                        f"{len(user_ids)} users x cutoff {cutoff} is more than "
                        f"{MAX_BATCH_ITEMS:,} items; send fewer users or a smaller cutoff."
                    ]
                },
            )
        return user_ids

    async def events(self, scope: Scope, receive: Receive) -> bytes:
        """Store one batch of feedback events; 202 once committed, 422 naming every bad field."""
        key = await self.authenticate_events(scope)
        payload = _parse(await self.read_body(receive))
        unknown = sorted(set(payload) - {"events"})
        if unknown:
            raise HTTPError(
                422, {"body": [f'Unknown field(s) {unknown}; send {{"events": [...]}}.']}
            )
        try:
            accepted, duplicates = await self._run(
                self.events_pool, db.store_events, key.project_id, payload.get("events")
            )
        except InvalidInput as exc:
            raise HTTPError(422, exc.message_dict) from None
        except ProjectGone:
            # Deleted since its key was cached: its keys went with it (cascade), so answer as
            # for any unknown key, here and on every other endpoint before the next poll.
            self.forget_keys_of(key.project_id)
            raise HTTPError(401, "Invalid, expired or revoked API key.") from None
        return orjson.dumps({"accepted": accepted, "duplicates": duplicates})

    async def answer(
        self, kind: str, served: Served, payload: dict[str, Any], slot: RouteSlot | None
    ) -> bytes:
        tail = self.tail(served, slot) + b"}"
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
                recs = loaded.recommend(
                    user_id, cutoff=cutoff, allowed_item_ids=allowed, excluded_item_ids=excluded
                )
            except UnknownUserError:
                raise HTTPError(404, f"User {user_id!r} is not in the model.") from None
            meta = await self._metadata(served, fields)
            return b'{"items":' + orjson.dumps(_items(recs, meta, fields)) + tail
        if kind == "batch":
            user_ids = self._batch_users(payload, cutoff)
            loaded.warm(user_ids, cutoff)  # first-time users scored together
            results = []
            for uid in user_ids:
                try:
                    results.append(
                        b'{"user_id":'
                        + orjson.dumps(uid)
                        + b',"items":'
                        + served.items_json(uid, cutoff)
                        + b"}"
                    )
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
                item_ids or [],
                cutoff=cutoff,
                allowed_item_ids=allowed,
                excluded_item_ids=excluded,
                exclude_seen=exclude_seen,
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
            raise HTTPError(
                422,
                {
                    "metadata_fields": [
                        f"Unknown column(s) {unknown}; available: {list(meta.columns)}."
                    ]
                },
            )
        return meta

    def operator(self, scope: Scope) -> bool:
        """Whether the request may see operator detail: no RECOTEM_METRICS_TOKEN is set, or
        ``Authorization: Bearer <token>`` matches it."""
        if not self.metrics_token:
            return True
        header = self._header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.metrics_token.encode()
        )

    async def health_for(self, scope: Scope) -> bytes:
        """``{"status"}`` for anyone; details for an API key (its own project only) or for the
        metrics token (everything). A bad key is a 401, as on every other endpoint."""
        if self._header(scope, b"x-api-key"):
            entry = await self.key_entry(scope)
            return self.health(project_id=entry.project_id)
        header = self._header(scope, b"authorization")
        if header and self.metrics_token:
            if not self.operator(scope):
                raise HTTPError(401, "Invalid metrics token.")
            return self.health(project_id=None)
        return orjson.dumps({"status": self.status()})

    def stale(self) -> bool:
        return self.last_poll_ok is None or time.time() - self.last_poll_ok > max(
            10.0, 5 * self.poll_interval
        )

    def status(self) -> str:
        return "degraded" if self.stale() or self.load_errors else "ok"

    def health(self, project_id: int | None) -> bytes:
        """Details for one project (``project_id``) or for the operator (None)."""
        now = time.time()

        def mine(pid: int | None) -> bool:
            return project_id is None or pid == project_id

        errors = {k: v for k, v in self.load_errors.items() if mine(v[2])}
        body: dict[str, Any] = {
            "status": "degraded" if self.stale() or errors else "ok",
            "routing_version": self.version,
            "last_poll_seconds_ago": None
            if self.last_poll_ok is None
            else round(now - self.last_poll_ok, 3),
            "models_loaded": [m for m, s in self.models.items() if mine(s.project_id)],
            "slots": {
                str(k): v
                for k, v in self.slot_models.items()
                if v in self.models and mine(self.models[v].project_id)
            },
            "load_errors": {str(k): v[0] for k, v in errors.items()},
        }
        if project_id is None:
            body["poll_error"] = self.last_poll_error or None
            body["answer_cache"] = {
                "entries": len(self.memo),
                "bytes": self.memo.bytes,
                "max_bytes": self.memo.max_bytes,
                "evictions": self.memo.evictions,
            }
        return orjson.dumps(body)


def build_app() -> InferenceApp:
    return InferenceApp()


application = build_app()
