"""Base classes and shared field types of the parameter and result Structs."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["KiB", "MiB", "Params", "Path", "Result"]

KiB = 1024
MiB = 1024 * KiB

Path = Annotated[
    str, Meta(min_length=1, description="File path; relative paths start at the host's cwd.")
]


class Params(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of parameter Structs: camelCase names, unknown fields rejected.

    msgspec does not inherit `kw_only`: subclasses say `kw_only=True` themselves.
    """


class Result(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of result Structs: camelCase names; fields left UNSET are omitted."""
