"""The signed model artifact.

A model is a pickled irspack recommender, and unpickling runs code, so an
artifact must be proven to come from us before ``pickle.loads`` sees a byte.
Layout (all integers big-endian)::

    magic      8 bytes   b"RCTMMDL\\x00"
    version    2 bytes   FORMAT_VERSION
    key id     2 bytes length + UTF-8 (which signing key; allows rotation)
    length     8 bytes   payload length
    mac       32 bytes   HMAC-SHA256(key, header-before-mac || payload)
    payload    pickle of a dict (see ``dump_artifact``)

The MAC covers the header too, so a key id or version cannot be swapped
without detection; the exact length is checked so truncation is reported as
such rather than as a confusing unpickling error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import pickle
import struct
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # both import irspack: verifying or re-signing an artifact needs neither
    from .recommend import LoadedModel
    from .training import FittedModel

MAGIC = b"RCTMMDL\x00"
FORMAT_VERSION = 1
_MAC_LEN = 32
_MAX_KEY_ID = 255


class ArtifactError(ValueError):
    """The bytes are not a valid, authentic artifact we can load."""


def _header(key_id: str, payload_len: int) -> bytes:
    kid = key_id.encode("utf-8")
    return (
        MAGIC + struct.pack(">HH", FORMAT_VERSION, len(kid)) + kid + struct.pack(">Q", payload_len)
    )


def dump_artifact(
    model: FittedModel,
    *,
    key: bytes,
    key_id: str,
    fingerprint: str | None = None,
    metrics: dict[str, Any] | None = None,
    created_at: str | None = None,
    fileobj: IO[bytes] | None = None,
) -> bytes:
    """Serialise and sign ``model``; return the bytes (also written to ``fileobj``).

    ``fingerprint`` identifies the training data (row count + content hash)
    so a retraining run can tell whether anything changed.
    """
    if not key:
        raise ValueError("signing key must not be empty")
    if not key_id or len(key_id.encode("utf-8")) > _MAX_KEY_ID:
        raise ValueError("key_id must be 1-255 bytes of UTF-8")
    payload = pickle.dumps(
        {
            "recommender": model.recommender,
            "user_ids": list(model.user_ids),
            "item_ids": list(model.item_ids),
            "class_name": model.class_name,
            "parameters": dict(model.parameters),
            "irspack_version": model.irspack_version,
            "data_fingerprint": fingerprint,
            "metrics": dict(metrics or {}),
            "created_at": created_at or dt.datetime.now(dt.UTC).isoformat(),
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    header = _header(key_id, len(payload))
    mac = hmac.new(key, header + payload, hashlib.sha256).digest()
    data = header + mac + payload
    if fileobj is not None:
        fileobj.write(data)
    return data


def read_key_id(data: bytes) -> str:
    """The key id of an artifact, without verifying it (for key look-up/rotation)."""
    return _parse(data)[0]


def _parse(data: bytes) -> tuple[str, bytes, bytes, bytes]:
    """Split into (key_id, signed header, mac, payload); ArtifactError if malformed."""
    fixed = len(MAGIC) + 4
    if len(data) < fixed or data[: len(MAGIC)] != MAGIC:
        raise ArtifactError("not a Recotem model artifact (bad magic bytes)")
    version, kid_len = struct.unpack(">HH", data[len(MAGIC) : fixed])
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"unsupported artifact format version {version} (this build reads {FORMAT_VERSION})"
        )
    head_end = fixed + kid_len + 8
    if len(data) < head_end + _MAC_LEN:
        raise ArtifactError("artifact is truncated (incomplete header)")
    try:
        key_id = data[fixed : fixed + kid_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError("artifact header is corrupt (key id)") from exc
    (payload_len,) = struct.unpack(">Q", data[fixed + kid_len : head_end])
    payload = data[head_end + _MAC_LEN :]
    if len(payload) < payload_len:
        raise ArtifactError(
            f"artifact is truncated: {len(payload)} of {payload_len} payload bytes present"
        )
    if len(payload) > payload_len:
        raise ArtifactError("artifact has trailing bytes after the payload")
    return key_id, data[:head_end], data[head_end : head_end + _MAC_LEN], payload


def verify_artifact(data: bytes, *, keys: dict[str, bytes]) -> tuple[str, bytes]:
    """Check the MAC (nothing is unpickled); return (key id, payload). ArtifactError if not
    authentic under one of ``keys``."""
    key_id, header, mac, payload = _parse(data)
    key = keys.get(key_id)
    if key is None:
        raise ArtifactError(
            f"artifact signed with unknown key id {key_id!r}; known: {sorted(keys)}"
        )
    expected = hmac.new(key, header + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise ArtifactError(
            "artifact signature mismatch: the file was modified or the key is wrong"
        )
    return key_id, payload


def resign_artifact(data: bytes, *, keys: dict[str, bytes], key: bytes, key_id: str) -> bytes:
    """The same artifact signed with ``key`` (``key_id``), after verifying it under ``keys``.

    The payload is copied byte for byte, never unpickled: re-signing needs no trust in it
    beyond the old signature. Raises ArtifactError when that signature does not verify.
    """
    if not key:
        raise ValueError("signing key must not be empty")
    if not key_id or len(key_id.encode("utf-8")) > _MAX_KEY_ID:
        raise ValueError("key_id must be 1-255 bytes of UTF-8")
    _, payload = verify_artifact(data, keys=keys)
    header = _header(key_id, len(payload))
    return header + hmac.new(key, header + payload, hashlib.sha256).digest() + payload


def load_artifact(
    data_or_fileobj: bytes | bytearray | memoryview | IO[bytes],
    *,
    keys: dict[str, bytes],
    precompute_k: int | None = None,
) -> LoadedModel:
    """Verify and load an artifact that keeps each user's top-``precompute_k`` list from the
    user's first request on (0: never; None: ``recommend.DEFAULT_PRECOMPUTE_K``).

    ``keys`` maps key ids to secrets (old keys stay listed during rotation).
    Raises ArtifactError for wrong magic, unknown format version, unknown
    key id, truncation or a MAC mismatch - always before unpickling.
    """
    if isinstance(data_or_fileobj, (bytes, bytearray, memoryview)):
        data = bytes(data_or_fileobj)
    else:
        data = data_or_fileobj.read()
    from .recommend import DEFAULT_PRECOMPUTE_K, LoadedModel

    _, payload = verify_artifact(data, keys=keys)
    try:
        content = pickle.load(io.BytesIO(payload))
    except Exception as exc:  # authentic but unreadable, e.g. a missing irspack class
        raise ArtifactError(f"artifact payload could not be unpickled: {exc}") from exc
    if not isinstance(content, dict) or "recommender" not in content:
        raise ArtifactError("artifact payload has an unexpected structure")
    model = LoadedModel(
        recommender=content["recommender"],
        user_ids=list(content["user_ids"]),
        item_ids=list(content["item_ids"]),
        class_name=str(content["class_name"]),
        parameters=dict(content["parameters"]),
        irspack_version=str(content["irspack_version"]),
        data_fingerprint=content.get("data_fingerprint"),
        metrics=dict(content.get("metrics") or {}),
        created_at=content.get("created_at"),
    )
    if precompute_k is None:
        precompute_k = DEFAULT_PRECOMPUTE_K
    if precompute_k > 0:
        model.keep_top(precompute_k)
    return model
