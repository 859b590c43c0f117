"""The S3 backend with names that are never reused.

Every machine caches stored objects by name (``recotem.core.files``), so a name must always mean
the same bytes. django-storages' ``file_overwrite=False`` only avoids names that exist *now*: once
an upload or snapshot is deleted its name is free again, and a machine still holding the old copy
would serve it for the new object. Each save therefore gets a fresh random suffix.
"""

from __future__ import annotations

import posixpath

from django.utils.crypto import get_random_string
from storages.backends.s3 import S3Storage


class ImmutableNameS3Storage(S3Storage):  # type: ignore[misc]  # django-storages ships no types
    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        directory, base = posixpath.split(name)
        root, ext = posixpath.splitext(base)
        token = get_random_string(12)
        if max_length is not None:
            # Keep the suffix and extension; shorten the readable part instead.
            room = max_length - len(directory) - len(ext) - len(token) - 2
            root = root[: max(room, 0)]
        return posixpath.join(directory, f"{root}_{token}{ext}")
