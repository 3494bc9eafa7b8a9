"""Binding paths: address values inside a node's ``parameters`` or ``results``.

Two spellings are accepted: JSON pointers (``/results/items/0``) and a dotted
form (``results.items[0].name``, ``results["a.b"]``).  Also parses the scope
prefixes (``#node``, ``@alias.sub.#node``) that say whose data a path refers to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

__all__ = [
    "BindingPath",
    "BindingPathError",
    "MissingValue",
    "ScopeRef",
    "Segment",
    "get_value",
    "merge_into",
    "parse_path",
    "parse_scope_prefix",
    "scope_from_parts",
    "set_value",
]

Segment = str | int

_ROOTS = ("parameters", "results")
_CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]*")
_BARE = re.compile(r"[^.\[\]]+")
_INDEX = re.compile(r"\[(-?[0-9]+)\]")
_QUOTED = re.compile(r"""\[(?:"((?:[^"\\]|\\[\\"'])*)"|'((?:[^'\\]|\\[\\"'])*)')\]""")
_UNESCAPE = re.compile(r"\\([\\\"'])")
_BAD_TILDE = re.compile(r"~(?![01])")
_NAME = r"[^.#@\s]+"
_LOCAL_SCOPE = re.compile(rf"#({_NAME})")
_SUBGRAPH_SCOPE = re.compile(rf"@({_NAME}(?:\.{_NAME})*)(?:\.#({_NAME}))?")


class BindingPathError(ValueError):
    """A binding path (or scope prefix) is malformed or cannot be written."""


class MissingValue(LookupError):
    """No value exists at a path; ``pointer`` is the first missing location."""

    def __init__(self, pointer: str, reason: str = "") -> None:
        super().__init__(pointer, reason)
        self.pointer = pointer
        self.reason = reason

    def __str__(self) -> str:
        detail = f": {self.reason}" if self.reason else ""
        return f"no value at {self.pointer!r}{detail}"


def _escape(segment: Segment) -> str:
    return str(segment).replace("~", "~0").replace("/", "~1")


def _pointer(segments: tuple[Segment, ...] | list[Segment]) -> str:
    return "".join("/" + _escape(s) for s in segments)


def _where(segments: tuple[Segment, ...]) -> str:
    return repr(_pointer(segments)) if segments else "the root"


_TYPE_NAMES = {dict: "object", list: "list", str: "string", type(None): "null", bool: "bool"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class BindingPath:
    """A parsed binding path: the root object plus the segments below it."""

    root: Literal["parameters", "results"]
    segments: tuple[Segment, ...]

    def pointer(self) -> str:
        """Canonical JSON pointer, e.g. ``/results/a~1b/0``."""
        return "/" + self.root + _pointer(self.segments)

    def __str__(self) -> str:
        return self.pointer()


def _check_root(first: str, path: str) -> Literal["parameters", "results"]:
    if first == "parameters":
        return "parameters"
    if first == "results":
        return "results"
    raise BindingPathError(f"binding path must start with 'parameters' or 'results': {path!r}")


def _parse_pointer(path: str) -> BindingPath:
    bad = _BAD_TILDE.search(path)
    if bad:
        raise BindingPathError(
            f"invalid escape at position {bad.start()} in binding path {path!r}: "
            "'~' must be followed by '0' or '1'"
        )
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]
    return BindingPath(_check_root(tokens[0], path), tuple(tokens[1:]))


def _parse_dotted(path: str) -> BindingPath:
    first = _BARE.match(path)
    if first is None:
        raise BindingPathError(f"binding path must start with 'parameters' or 'results': {path!r}")
    root = _check_root(first.group(), path)
    segments: list[Segment] = []
    pos, end = first.end(), len(path)
    while pos < end:
        char = path[pos]
        if char == ".":
            m = _BARE.match(path, pos + 1)
            if m is None:
                raise BindingPathError(f"empty segment at position {pos + 1} in path {path!r}")
            segments.append(m.group())
        elif char == "[" and (m := _INDEX.match(path, pos)):
            digits = m.group(1)
            if not _CANONICAL_INDEX.fullmatch(digits.removeprefix("-")) or digits == "-0":
                raise BindingPathError(f"malformed list index [{digits}] in binding path {path!r}")
            segments.append(int(digits))
        elif char == "[" and (m := _QUOTED.match(path, pos)):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            segments.append(_UNESCAPE.sub(r"\1", raw))
        elif char == "[":
            raise BindingPathError(
                f"malformed bracket at position {pos} in binding path {path!r}: expected [<int>] "
                "or a quoted key (only \\\\, \\\" and \\' escapes are allowed)"
            )
        else:
            raise BindingPathError(f"unexpected {char!r} at position {pos} in path {path!r}")
        pos = m.end()
    return BindingPath(root, tuple(segments))


@lru_cache(maxsize=4096)
def parse_path(path: str) -> BindingPath:
    """Parse a JSON pointer (``/results/x/0``) or dotted path (``results.x[0]``)."""
    if not path:
        raise BindingPathError("binding path is empty: ''")
    if path.startswith("/"):
        return _parse_pointer(path)
    return _parse_dotted(path)


def get_value(data: Any, segments: tuple[Segment, ...]) -> Any:
    """Return the value at ``segments`` inside ``data``; raise MissingValue if absent."""
    current = data
    for depth, segment in enumerate(segments):
        if isinstance(current, dict):
            if not isinstance(segment, str) or segment not in current:
                raise MissingValue(_pointer(segments[: depth + 1]), "no such key")
            current = current[segment]
        elif isinstance(current, (list, tuple)):
            if isinstance(segment, str):
                if not _CANONICAL_INDEX.fullmatch(segment):
                    raise MissingValue(_pointer(segments[: depth + 1]), "not a list index")
                segment = int(segment)
            if not -len(current) <= segment < len(current):
                raise MissingValue(_pointer(segments[: depth + 1]), "index out of range")
            current = current[segment]
        else:
            reason = f"parent is of type {_type_name(current)}"
            raise MissingValue(_pointer(segments[: depth + 1]), reason)
    return current


def _write_index(items: list[Any], segments: tuple[Segment, ...], depth: int) -> int:
    segment = segments[depth]
    target = _where(segments)
    if isinstance(segment, str):
        if segment == "-":
            return len(items)
        if not _CANONICAL_INDEX.fullmatch(segment):
            raise BindingPathError(
                f"cannot set {target}: {_where(segments[:depth])} is a list, "
                f"which has no key {segment!r}"
            )
        segment = int(segment)
    if segment < 0:
        raise BindingPathError(f"cannot set {target}: negative list index {segment} is read-only")
    if segment > len(items):
        raise BindingPathError(
            f"cannot set {target}: index {segment} is beyond the end of the list at "
            f"{_where(segments[:depth])} (length {len(items)})"
        )
    return segment


def _build(segments: tuple[Segment, ...], start: int, value: Any) -> Any:
    """Nest ``value`` in fresh dicts for ``segments[start:]``; no list can be created."""
    for depth in range(start, len(segments)):
        if isinstance(segments[depth], int):
            raise BindingPathError(
                f"cannot set {_where(segments)}: cannot index a missing list at "
                f"{_where(segments[:depth])}"
            )
    for segment in reversed(segments[start:]):
        value = {segment: value}
    return value


def set_value(data: dict[str, Any], segments: tuple[Segment, ...], value: Any) -> dict[str, Any]:
    """Write ``value`` at ``segments`` (creating dicts as needed); return ``data``."""
    segments = tuple(segments)
    if not segments:
        if not isinstance(value, dict):
            raise BindingPathError(
                f"only an object can replace the whole root object, got a {_type_name(value)}"
            )
        if value is not data:
            data.clear()
            data.update(value)
        return data
    current: Any = data
    last = len(segments) - 1
    for depth, segment in enumerate(segments):
        if isinstance(current, dict):
            if not isinstance(segment, str):
                raise BindingPathError(
                    f"cannot set {_where(segments)}: {_where(segments[:depth])} is an object, "
                    f"which cannot take list index [{segment}]"
                )
            if depth < last and segment in current:
                current = current[segment]
                continue
            current[segment] = _build(segments, depth + 1, value)
            return data
        if isinstance(current, list):
            index = _write_index(current, segments, depth)
            if depth < last and index < len(current):
                current = current[index]
                continue
            new = _build(segments, depth + 1, value)
            if index == len(current):
                current.append(new)
            else:
                current[index] = new
            return data
        raise BindingPathError(
            f"cannot set {_where(segments)}: {_where(segments[:depth])} is of type "
            f"{_type_name(current)}, not an object or list"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def merge_into(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``patch`` into ``target`` (dicts recurse, others replace); return it."""
    for key, value in patch.items():
        if isinstance(value, dict):
            existing = target.get(key)
            # Copy new dicts so later merges never mutate the patch.
            target[key] = merge_into(existing if isinstance(existing, dict) else {}, value)
        else:
            target[key] = value
    return target


@dataclass(frozen=True, slots=True)
class ScopeRef:
    """Where a binding looks: a local node, or a (node in a) nested subgraph."""

    kind: Literal["local", "subgraph"]
    aliases: tuple[str, ...]
    node_id: str | None


def parse_scope_prefix(prefix: str) -> ScopeRef | None:
    """Parse ``#node``, ``@a.b`` or ``@a.b.#node``; blank gives None."""
    text = prefix.strip()
    if not text:
        return None
    if m := _LOCAL_SCOPE.fullmatch(text):
        return ScopeRef("local", (), m.group(1))
    if m := _SUBGRAPH_SCOPE.fullmatch(text):
        return ScopeRef("subgraph", tuple(m.group(1).split(".")), m.group(2))
    raise BindingPathError(
        f"invalid scope prefix {prefix!r}: expected '#node', '@alias[.alias...]' "
        "or '@alias[.alias...].#node'"
    )


def _check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(_NAME, name):
        raise BindingPathError(f"invalid scope {what} {name!r}: need non-empty, no . # @ or spaces")
    return name


def scope_from_parts(
    prefix: str | None,
    kind: str | None,
    aliases: list[str] | None,
    node_id: str | None,
) -> ScopeRef | None:
    """Build a ScopeRef from a prefix string and/or structured fields."""
    from_prefix = parse_scope_prefix(prefix) if prefix is not None else None
    if kind is None and not aliases and node_id is None:
        return from_prefix
    if kind == "local":
        if node_id is None or aliases:
            raise BindingPathError("a 'local' scope needs a node_id and no aliases")
        built = ScopeRef("local", (), _check_name("node id", node_id))
    elif kind == "subgraph":
        if not aliases:
            raise BindingPathError("a 'subgraph' scope needs at least one alias")
        names = tuple(_check_name("alias", a) for a in aliases)
        node = None if node_id is None else _check_name("node id", node_id)
        built = ScopeRef("subgraph", names, node)
    else:
        raise BindingPathError(f"unknown scope kind {kind!r}: expected 'local' or 'subgraph'")
    if from_prefix is not None and from_prefix != built:
        raise BindingPathError(
            f"scope prefix {prefix!r} conflicts with structured scope "
            f"(kind={built.kind!r}, aliases={list(built.aliases)!r}, node_id={built.node_id!r})"
        )
    return built
