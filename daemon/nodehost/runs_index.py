"""Runs in listing order, the documents as submitted, and the keyset cursor (tier 5, no I/O).

`GET /runs` lists a tenant's runs by (createdAt, runId), oldest first. The cursor is that key
of the last run of a page, with the filters it was issued for: base64url (no padding) of a
msgpack array `[1, createdAt, runId, status, clientId]`. A page starts strictly after the key,
and keys never change, so paging never repeats or skips a run, whatever statuses change in
between (runs are not deleted yet; when they are, a deleted key still orders correctly).
A cursor that does not decode, or that is used with other filters, is a `CursorError`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from .runstate import Run

__all__ = ["CursorError", "Entry", "Page", "RunsIndex"]

_CURSOR_VERSION = 1


class CursorError(ValueError):
    """The cursor is malformed or was issued for other filters."""


class _Cursor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    created_at: datetime
    run_id: str
    status: str | None
    client_id: str | None


_encode_cursor = msgspec.msgpack.Encoder().encode
_decode_cursor = msgspec.msgpack.Decoder(_Cursor).decode
_decode_document = msgspec.msgpack.Decoder(dict[str, Any]).decode


def encode_cursor(run: Run, status: str | None, client_id: str | None) -> str:
    raw = _encode_cursor(_Cursor(_CURSOR_VERSION, run.created_at, run.run_id, status, client_id))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, status: str | None, client_id: str | None) -> tuple[datetime, str]:
    """The (createdAt, runId) key a cursor points after; CursorError if it cannot be used."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = _decode_cursor(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise CursorError("the cursor is malformed; use nextCursor as returned") from None
    if decoded.version != _CURSOR_VERSION or decoded.created_at.tzinfo is None:
        raise CursorError("the cursor is malformed; use nextCursor as returned")
    if (decoded.status, decoded.client_id) != (status, client_id):
        raise CursorError("the cursor was issued for other filters (status, clientId); "
                          "use it with the same filters or start again without a cursor")
    return decoded.created_at, decoded.run_id


@dataclass(slots=True)
class Entry:
    """One run as the API sees it: the run, and its workflow exactly as it was sent."""

    run: Run
    document: bytes  # msgpack-encoded

    def workflow(self) -> dict[str, Any]:
        """The workflow as it was sent, decoded anew (the caller may change it)."""
        return _decode_document(self.document)


@dataclass(frozen=True, slots=True)
class Page:
    runs: list[Run]
    next_cursor: str | None


class RunsIndex:
    """Every run the API admitted, per tenant, in (createdAt, runId) order."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._keys: dict[str, list[tuple[datetime, str]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, run: Run, document: bytes) -> None:
        """Index a run with its workflow as sent (msgpack-encoded)."""
        self._entries[run.run_id] = Entry(run, document)
        keys = self._keys.setdefault(run.tenant, [])
        key = (run.created_at, run.run_id)
        if not keys or keys[-1] < key:
            keys.append(key)
        else:  # the wall clock went back: keep the order anyway
            bisect.insort(keys, key)

    def remove(self, run_ids: Iterable[str]) -> None:
        """Forget runs (retention); their keys leave the listing order too."""
        for run_id in run_ids:
            entry = self._entries.pop(run_id, None)
            if entry is None:
                continue
            keys = self._keys.get(entry.run.tenant, [])
            key = (entry.run.created_at, run_id)
            i = bisect.bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                del keys[i]

    def get(self, tenant: str, run_id: str) -> Entry | None:
        """The run if it exists and belongs to `tenant` (else None: the caller says 404)."""
        entry = self._entries.get(run_id)
        if entry is None or entry.run.tenant != tenant:
            return None
        return entry

    def page(self, tenant: str, *, limit: int, cursor: str | None = None,
             status: str | None = None, client_id: str | None = None) -> Page:
        """Up to `limit` runs after the cursor that match the filters; CursorError if bad."""
        keys = self._keys.get(tenant, [])
        start = 0
        if cursor is not None:
            start = bisect.bisect_right(keys, decode_cursor(cursor, status, client_id))
        found: list[Run] = []
        for i in range(start, len(keys)):
            run = self._entries[keys[i][1]].run
            if status is not None and run.status != status:
                continue
            if client_id is not None and run.client_id != client_id:
                continue
            if len(found) == limit:  # one more matches: there is a next page
                return Page(found, encode_cursor(found[-1], status, client_id))
            found.append(run)
        return Page(found, None)
