"""Parameters checked against a node type's JSON Schema, with compiled validators (tier 1).

The daemon knows a node type by its descriptor, never by its code, so admission checks the
static parameters of each node against the `parametersSchema` the package published:
jsonschema-rs compiles one validator per parameter of a node type, once, and a 100,000-node
document costs a dict lookup and a compiled check per given parameter.

Only an object schema with `properties` is checked key by key (a union of objects, or a
plain `{"type": "object"}`, is left to the worker, which decodes with the node's own types).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs

from .descriptors import NodeType

__all__ = ["ParameterChecks", "checks_for"]

_CACHE = "_nodehost_checks"  # where a NodeType keeps its compiled checks


class ParameterChecks:
    """The compiled checks of one node type's parameters."""

    def __init__(self, properties: dict[str, Any], required: list[str], closed: bool,
                 defs: dict[str, Any]) -> None:
        self.properties = properties
        self.required = required
        self.closed = closed  # unknown keys are refused (additionalProperties: false)
        self._defs = defs
        self._validators: dict[str, Any] = {}

    def knows(self, key: str) -> bool:
        return key in self.properties or not self.closed

    def errors(self, key: str, value: Any) -> Iterator[tuple[str, str]]:
        """(path below the key, reason) of each way `value` does not fit parameter `key`."""
        schema = self.properties.get(key)
        if schema is None:
            return
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = jsonschema_rs.validator_for(
                {**schema, "$defs": self._defs} if self._defs else schema)
        if validator.is_valid(value):
            return
        for error in validator.iter_errors(value):
            yield _path(error.instance_path), error.message


def checks_for(node_type: NodeType) -> ParameterChecks | None:
    """The checks of a node type (made on first use, then kept with it); None when its
    schema does not name its parameters."""
    store = node_type.__dict__
    if _CACHE not in store:
        store[_CACHE] = _compile(node_type.parameters_schema)
    checks: ParameterChecks | None = store[_CACHE]
    return checks


def _compile(schema: dict[str, Any]) -> ParameterChecks | None:
    defs = schema.get("$defs", {})
    root = schema
    seen = 0
    while "$ref" in root and seen < 32:  # a Struct is a $ref into $defs
        root = defs.get(str(root["$ref"]).rsplit("/", 1)[-1], {})
        seen += 1
    properties = root.get("properties")
    if root.get("type") != "object" or not isinstance(properties, dict):
        return None
    return ParameterChecks(properties, list(root.get("required", [])),
                           root.get("additionalProperties") is False, defs)


def _path(segments: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in segments)
