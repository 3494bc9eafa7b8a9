"""`nodehost.std.json.transform`: reshape JSON with a list of steps (no expression language).

Each step is an object tagged by "op": select, pick, omit, rename, merge, set, default, map.
Paths are JSON pointers ("/items/0/name"; "~1" stands for "/" and "~0" for "~").
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Annotated, Any

from msgspec import Meta

from nodehost import Context, NodeError

from . import package, pointer
from .pointer import PointerError
from .structs import Params, Result

__all__ = ["TransformParams", "TransformResult", "TransformStep", "transform"]

Pointer = Annotated[
    str,
    Meta(pattern=pointer.PATTERN, description="JSON pointer, e.g. /items/0 ('' = the data)."),
]
Keys = Annotated[list[str], Meta(description="Object keys.")]


class Step(Params, tag_field="op", kw_only=True):
    """Base of the transform steps; the "op" field says which one."""


class SelectStep(Step, tag="select", kw_only=True):
    """Replace the data with the value at `path`."""

    path: Pointer


class PickStep(Step, tag="pick", kw_only=True):
    """Keep only these keys of an object (those present, in this order)."""

    keys: Keys


class OmitStep(Step, tag="omit", kw_only=True):
    """Drop these keys from an object."""

    keys: Keys


class RenameStep(Step, tag="rename", kw_only=True):
    """Rename keys of an object: {"old": "new"}."""

    mapping: Annotated[dict[str, str], Meta(min_length=1)]


class MergeStep(Step, tag="merge", kw_only=True):
    """Merge an object into the data (an object); `deep` merges nested objects too."""

    value: dict[str, Any]
    deep: bool = False


class SetStep(Step, tag="set", kw_only=True):
    """Set the value at `path`, creating missing parent objects."""

    path: Pointer
    value: Any


class DefaultStep(Step, tag="default", kw_only=True):
    """Set the value at `path` only if there is none."""

    path: Pointer
    value: Any


class MapStep(Step, tag="map", kw_only=True):
    """Apply `steps` to each item of a list."""

    steps: list[TransformStep]


TransformStep = (
    SelectStep | PickStep | OmitStep | RenameStep | MergeStep | SetStep | DefaultStep | MapStep
)


class TransformParams(Params, kw_only=True):
    """Transform JSON data with an ordered list of steps."""

    data: Annotated[Any, Meta(description="The JSON value to transform.")]
    steps: list[TransformStep]


class TransformResult(Result, kw_only=True):
    data: Any


@package.node("nodehost.std.json.transform", idempotent=True)
def transform(ctx: Context, params: TransformParams) -> TransformResult:
    """Reshape JSON data with steps: select, pick, omit, rename, merge, set, default, map."""
    data = _apply(ctx, params.steps, copy.deepcopy(params.data), "")
    return TransformResult(data=data)


class _StepError(ValueError):
    """A step that cannot apply to the data it was given."""


def _apply(ctx: Context, steps: list[TransformStep], data: Any, where: str) -> Any:
    for index, step in enumerate(steps):
        ctx.raise_if_cancelled()
        label = f"{where}steps[{index}] ({step.__struct_config__.tag})"
        try:
            data = _OPS[type(step)](ctx, step, data, label)
        except (PointerError, _StepError) as exc:
            raise NodeError(
                "E.STD.TRANSFORM",
                f"{label}: {exc}",
                remediation="Check the step against the data it receives.",
            ) from None
    return data


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _StepError(f"the data is {pointer.kind(data)}, not an object")
    return data


def _select(ctx: Context, step: SelectStep, data: Any, label: str) -> Any:
    return pointer.get(data, step.path)


def _pick(ctx: Context, step: PickStep, data: Any, label: str) -> Any:
    obj = _object(data)
    return {key: obj[key] for key in step.keys if key in obj}


def _omit(ctx: Context, step: OmitStep, data: Any, label: str) -> Any:
    drop = set(step.keys)
    return {key: value for key, value in _object(data).items() if key not in drop}


def _rename(ctx: Context, step: RenameStep, data: Any, label: str) -> Any:
    obj = _object(data)
    for old, new in step.mapping.items():
        if old not in obj:
            raise _StepError(f"no key {old!r} to rename")
        if new in obj and new not in step.mapping:
            raise _StepError(f"renaming {old!r} to {new!r} would overwrite key {new!r}")
    targets = list(step.mapping.values())
    if len(set(targets)) != len(targets):
        raise _StepError("two keys are renamed to the same name")
    return {step.mapping.get(key, key): value for key, value in obj.items()}


def _merge(ctx: Context, step: MergeStep, data: Any, label: str) -> Any:
    obj = _object(data)
    value = copy.deepcopy(step.value)
    return _deep_merge(obj, value) if step.deep else obj | value


def _deep_merge(into: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], item)
        else:
            into[key] = item
    return into


def _set(ctx: Context, step: SetStep, data: Any, label: str) -> Any:
    return pointer.put(data, step.path, copy.deepcopy(step.value))


def _default(ctx: Context, step: DefaultStep, data: Any, label: str) -> Any:
    if pointer.has(data, step.path):
        return data
    return pointer.put(data, step.path, copy.deepcopy(step.value))


def _map(ctx: Context, step: MapStep, data: Any, label: str) -> Any:
    if not isinstance(data, list):
        raise _StepError(f"the data is {pointer.kind(data)}, not a list")
    return [_apply(ctx, step.steps, item, f"{label}: item {i}: ") for i, item in enumerate(data)]


_OPS: dict[type, Callable[[Context, Any, Any, str], Any]] = {
    SelectStep: _select,
    PickStep: _pick,
    OmitStep: _omit,
    RenameStep: _rename,
    MergeStep: _merge,
    SetStep: _set,
    DefaultStep: _default,
    MapStep: _map,
}
