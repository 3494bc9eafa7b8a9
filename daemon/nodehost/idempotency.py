"""`Idempotency-Key` for POST /runs: the same key and body give the same run (tier 5).

Keys are per tenant, at most 64 printable ASCII characters. A key is remembered with the
fingerprint of the body (sha256 of its canonical JSON: sorted keys, compact, so whitespace
and key order do not matter) and the run it created, for `ttl` seconds, at most `max_keys`
keys (the oldest are forgotten first). In memory for now: the journal will make it durable.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["IdempotencyCache", "IdempotencyConflict", "body_fingerprint", "check_key"]

MAX_KEY_LENGTH = 64
_KEY = re.compile(r"^[\x21-\x7e]{1,64}$")


class IdempotencyConflict(Exception):
    """The key was used before with another body (answer 409)."""


def check_key(key: str) -> str | None:
    """What is wrong with a key, or None if it is fine."""
    if len(key) > MAX_KEY_LENGTH:
        return f"Idempotency-Key is {len(key)} characters; at most {MAX_KEY_LENGTH} are allowed"
    if not _KEY.match(key):
        return "Idempotency-Key must be printable ASCII without spaces"
    return None


def body_fingerprint(document: Any) -> bytes:
    """sha256 of the canonical JSON of a decoded body."""
    return hashlib.sha256(msgspec.json.encode(document, order="sorted")).digest()


class IdempotencyCache:
    def __init__(self, *, max_keys: int = 10_000, ttl: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_keys
        self._ttl = ttl
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], tuple[float, bytes, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, tenant: str, key: str, fingerprint: bytes) -> str | None:
        """The run id created with this key, None if the key is new; conflict if the body
        differs."""
        self._expire()
        found = self._keys.get((tenant, key))
        if found is None:
            return None
        _, known, run_id = found
        if known != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for another request body (run {run_id})")
        return run_id

    def remember(self, tenant: str, key: str, fingerprint: bytes, run_id: str) -> None:
        self._keys[(tenant, key)] = (self._clock(), fingerprint, run_id)
        while len(self._keys) > self._max:
            self._keys.popitem(last=False)

    def _expire(self) -> None:
        horizon = self._clock() - self._ttl
        while self._keys:
            stamp = next(iter(self._keys.values()))[0]
            if stamp >= horizon:
                return
            self._keys.popitem(last=False)
