"""The inference app's memo of serialized answers: one LRU per process, bounded in bytes.

Every loaded model shares it (``RECOTEM_INFERENCE_CACHE_MB``), so neither many models nor
many distinct (user, cutoff) pairs can grow a process past the budget: the least recently used
answers are dropped first. Only answers the model can give from its kept top-K are
worth keeping (``cutoff <= precompute_k``); anything else is computed per request anyway.
"""

from __future__ import annotations

from collections import OrderedDict

# Bytes an entry costs beyond its value and user id: the OrderedDict node and slot, the key
# tuple, the str and bytes object headers (measured with tracemalloc: ~230 on CPython 3.11).
ENTRY_OVERHEAD = 256

Key = tuple[int, str, int]  # (model id, user id, cutoff)


class AnswerCache:
    __slots__ = ("max_bytes", "entries", "bytes", "evictions")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.entries: OrderedDict[Key, bytes] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    @staticmethod
    def cost(key: Key, value: bytes) -> int:
        return len(value) + len(key[1]) + ENTRY_OVERHEAD

    def get(self, key: Key) -> bytes | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: Key, value: bytes) -> None:
        size = self.cost(key, value)
        if size > self.max_bytes:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= self.cost(key, old)
        self.entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_key, old_value = self.entries.popitem(last=False)
            self.bytes -= self.cost(old_key, old_value)
            self.evictions += 1

    def drop_model(self, model_id: int) -> None:
        """Forget a model's answers (it was evicted from the model cache)."""
        for key in [k for k in self.entries if k[0] == model_id]:
            self.bytes -= self.cost(key, self.entries.pop(key))

    def __len__(self) -> int:
        return len(self.entries)
