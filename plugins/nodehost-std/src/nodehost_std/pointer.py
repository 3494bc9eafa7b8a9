"""A small JSON pointer (RFC 6901) resolver: "/a/b/0", with "~0" for "~" and "~1" for "/"."""

from __future__ import annotations

from typing import Any

__all__ = ["PATTERN", "PointerError", "get", "has", "kind", "put"]

PATTERN = r"^(/([^~]|~[01])*)*$"  # "" is the whole document


class PointerError(ValueError):
    """A pointer that names no value, or goes through something that is not a container."""


def parse(pointer: str) -> list[str]:
    if pointer and not pointer.startswith("/"):
        raise PointerError(f"{pointer!r} is not a JSON pointer: it must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def show(tokens: list[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def kind(value: Any) -> str:
    """`value`'s JSON type with an article: 'an object', 'a list', 'null'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def get(doc: Any, pointer: str) -> Any:
    """The value at `pointer`; PointerError naming the first part that is missing."""
    tokens = parse(pointer)
    for depth, token in enumerate(tokens):
        doc = _child(doc, token, tokens[: depth + 1])
    return doc


def has(doc: Any, pointer: str) -> bool:
    try:
        get(doc, pointer)
    except PointerError:
        return False
    return True


def put(doc: Any, pointer: str, value: Any) -> Any:
    """Set the value at `pointer` in place, creating missing parent objects; returns the doc.

    In a list, an index equal to its length (or "-") appends.
    """
    tokens = parse(pointer)
    if not tokens:
        return value
    parent = doc
    for depth, token in enumerate(tokens[:-1]):
        if isinstance(parent, dict) and token not in parent:
            parent[token] = {}
        parent = _child(parent, token, tokens[: depth + 1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else _index(last, tokens)
        if index > len(parent):
            raise PointerError(f"cannot set {show(tokens)}: {_items(parent)}")
        if index == len(parent):
            parent.append(value)
        else:
            parent[index] = value
    else:
        where = show(tokens[:-1]) or "the data"
        raise PointerError(f"cannot set {show(tokens)}: {where} is {kind(parent)}")
    return doc


def _child(value: Any, token: str, at: list[str]) -> Any:
    if isinstance(value, dict):
        if token not in value:
            raise PointerError(f"no value at {show(at)}: no key {token!r}")
        return value[token]
    if isinstance(value, list):
        index = _index(token, at)
        if index >= len(value):
            raise PointerError(f"no value at {show(at)}: {_items(value)}")
        return value[index]
    where = show(at[:-1]) or "the data"
    raise PointerError(f"no value at {show(at)}: {where} is {kind(value)}")


def _index(token: str, at: list[str]) -> int:
    if token.isascii() and token.isdigit() and (token == "0" or not token.startswith("0")):
        return int(token)
    raise PointerError(f"no value at {show(at)}: {token!r} is not a list index")


def _items(items: list[Any]) -> str:
    return f"list has {len(items)} item{'' if len(items) == 1 else 's'}"
