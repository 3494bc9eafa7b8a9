"""nodehost.std.json.transform: steps over JSON data, with errors naming step and pointer."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from nodehost_std import package

from std_support import call, failure

SPEC = package.nodes["nodehost.std.json.transform"]


def transform(data: Any, *steps: dict[str, Any]) -> Any:
    result = call(SPEC, {"data": data, "steps": list(steps)})
    assert list(result) == ["data"]
    return result["data"]


def transform_error(data: Any, *steps: dict[str, Any]) -> str:
    error = failure(SPEC, {"data": data, "steps": list(steps)})
    assert error.code == "E.STD.TRANSFORM"
    return error.message


READINGS = {
    "device": {"id": "pump-3", "site": "north"},
    "items": [
        {"sensor": "t1", "value": 21.5, "unit": "C", "raw": "0x15"},
        {"sensor": "t2", "value": 19.0, "unit": "C", "raw": "0x13"},
    ],
}


# --- each step ----------------------------------------------------------------------------


def test_no_steps_returns_the_data() -> None:
    assert transform(READINGS) == READINGS


def test_select_by_json_pointer() -> None:
    assert transform(READINGS, {"op": "select", "path": "/items/1/value"}) == 19.0
    assert transform(READINGS, {"op": "select", "path": ""}) == READINGS


def test_pointer_escapes() -> None:
    data = {"a/b": {"m~n": 1}}
    assert transform(data, {"op": "select", "path": "/a~1b/m~0n"}) == 1


def test_pick_and_omit() -> None:
    item = READINGS["items"][0]
    assert transform(item, {"op": "pick", "keys": ["value", "sensor", "absent"]}) == {
        "value": 21.5,
        "sensor": "t1",
    }
    assert transform(item, {"op": "omit", "keys": ["raw", "absent"]}) == {
        "sensor": "t1",
        "value": 21.5,
        "unit": "C",
    }


def test_rename_keeps_order_and_can_swap() -> None:
    assert list(transform({"a": 1, "b": 2, "c": 3}, {"op": "rename", "mapping": {"b": "x"}})) == [
        "a",
        "x",
        "c",
    ]
    assert transform({"a": 1, "b": 2}, {"op": "rename", "mapping": {"a": "b", "b": "a"}}) == {
        "b": 1,
        "a": 2,
    }


def test_merge_shallow_and_deep() -> None:
    data = {"opts": {"retries": 1, "verbose": False}, "name": "x"}
    patch = {"opts": {"retries": 3}, "tag": "y"}
    assert transform(data, {"op": "merge", "value": patch}) == {
        "opts": {"retries": 3},
        "name": "x",
        "tag": "y",
    }
    assert transform(data, {"op": "merge", "value": patch, "deep": True}) == {
        "opts": {"retries": 3, "verbose": False},
        "name": "x",
        "tag": "y",
    }


def test_set_replaces_creates_parents_and_appends() -> None:
    assert transform({"a": 1}, {"op": "set", "path": "/a", "value": [1]}) == {"a": [1]}
    assert transform({}, {"op": "set", "path": "/meta/source/name", "value": "edge"}) == {
        "meta": {"source": {"name": "edge"}}
    }
    assert transform(
        {"l": [1, 2]},
        {"op": "set", "path": "/l/-", "value": 3},
        {"op": "set", "path": "/l/3", "value": 4},
        {"op": "set", "path": "/l/0", "value": 0},
    ) == {"l": [0, 2, 3, 4]}
    assert transform({"a": 1}, {"op": "set", "path": "", "value": "whole"}) == "whole"


def test_default_sets_only_missing_values() -> None:
    data = {"timeout": None, "retries": 2}
    assert transform(
        data,
        {"op": "default", "path": "/timeout", "value": 30},
        {"op": "default", "path": "/retries", "value": 5},
        {"op": "default", "path": "/log/level", "value": "info"},
    ) == {"timeout": None, "retries": 2, "log": {"level": "info"}}


def test_map_applies_steps_to_each_item_and_nests() -> None:
    result = transform(
        READINGS,
        {"op": "select", "path": "/items"},
        {
            "op": "map",
            "steps": [
                {"op": "pick", "keys": ["sensor", "value"]},
                {"op": "rename", "mapping": {"sensor": "id"}},
                {"op": "set", "path": "/tags", "value": []},
            ],
        },
    )
    assert result == [
        {"id": "t1", "value": 21.5, "tags": []},
        {"id": "t2", "value": 19.0, "tags": []},
    ]
    assert result[0]["tags"] is not result[1]["tags"]  # each item gets its own copy
    nested = transform(
        [[{"a": 1}], [{"a": 2}, {"a": 3}]],
        {"op": "map", "steps": [{"op": "map", "steps": [{"op": "select", "path": "/a"}]}]},
    )
    assert nested == [[1], [2, 3]]


def test_the_input_is_not_modified() -> None:
    data = copy.deepcopy(READINGS)
    transform(
        data,
        {"op": "set", "path": "/device/id", "value": "other"},
        {"op": "merge", "value": {"device": {"site": "south"}}, "deep": True},
        {"op": "select", "path": "/items"},
        {"op": "map", "steps": [{"op": "omit", "keys": ["raw"]}]},
    )
    assert data == READINGS


# --- errors name the step and the pointer -------------------------------------------------


def test_select_past_the_end_of_a_list() -> None:
    message = transform_error(
        {"items": [1, 2]},
        {"op": "set", "path": "/x", "value": 1},
        {"op": "omit", "keys": ["x"]},
        {"op": "select", "path": "/items/3"},
    )
    assert message == "steps[2] (select): no value at /items/3: list has 2 items"


@pytest.mark.parametrize(
    ("data", "step", "message"),
    [
        (
            {"a": {}},
            {"op": "select", "path": "/a/b"},
            "steps[0] (select): no value at /a/b: no key 'b'",
        ),
        (
            {"a": "text"},
            {"op": "select", "path": "/a/b"},
            "steps[0] (select): no value at /a/b: /a is a string",
        ),
        (
            {"l": [1]},
            {"op": "select", "path": "/l/first"},
            "steps[0] (select): no value at /l/first: 'first' is not a list index",
        ),
        ({"l": [1]}, {"op": "select", "path": "/l/01"}, "'01' is not a list index"),
        (
            [1, 2],
            {"op": "pick", "keys": ["a"]},
            "steps[0] (pick): the data is a list, not an object",
        ),
        (3, {"op": "omit", "keys": ["a"]}, "steps[0] (omit): the data is a number, not an object"),
        (
            {"a": 1},
            {"op": "rename", "mapping": {"b": "c"}},
            "steps[0] (rename): no key 'b' to rename",
        ),
        (
            {"a": 1, "b": 2},
            {"op": "rename", "mapping": {"a": "b"}},
            "renaming 'a' to 'b' would overwrite key 'b'",
        ),
        (None, {"op": "merge", "value": {}}, "steps[0] (merge): the data is null, not an object"),
        (
            {"l": [1]},
            {"op": "set", "path": "/l/5", "value": 0},
            "steps[0] (set): cannot set /l/5: list has 1 item",
        ),
        (
            {"a": True},
            {"op": "set", "path": "/a/b", "value": 0},
            "steps[0] (set): cannot set /a/b: /a is a boolean",
        ),
        (
            {"a": 1},
            {"op": "default", "path": "/a/b", "value": 0},
            "steps[0] (default): cannot set /a/b: /a is a number",
        ),
        ({"a": 1}, {"op": "map", "steps": []}, "steps[0] (map): the data is an object, not a list"),
    ],
)
def test_errors(data: Any, step: dict[str, Any], message: str) -> None:
    assert message in transform_error(data, step)


def test_errors_inside_map_name_the_item() -> None:
    message = transform_error(
        [{"name": "a"}, {"id": 2}],
        {"op": "map", "steps": [{"op": "select", "path": "/name"}]},
    )
    assert message == "steps[0] (map): item 1: steps[0] (select): no value at /name: no key 'name'"


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": []}, "missing required field `data`"),
        ({"data": 1}, "missing required field `steps`"),
        ({"data": 1, "steps": [{"op": "eval", "code": "1+1"}]}, "$.steps[0].op"),
        ({"data": 1, "steps": [{"path": "/a"}]}, "missing required field `op`"),
        ({"data": 1, "steps": [{"op": "select", "path": "a/b"}]}, "$.steps[0].path"),
        ({"data": 1, "steps": [{"op": "select", "path": "/a~2"}]}, "$.steps[0].path"),
        ({"data": 1, "steps": [{"op": "pick", "keys": "a"}]}, "$.steps[0].keys"),
        ({"data": 1, "steps": [{"op": "rename", "mapping": {}}]}, "$.steps[0].mapping"),
        ({"data": 1, "steps": [{"op": "merge", "value": [1]}]}, "$.steps[0].value"),
        ({"data": 1, "steps": [{"op": "set", "path": "/a"}]}, "missing required field `value`"),
        (
            {"data": 1, "steps": [{"op": "map", "steps": [{"op": "select", "path": "x"}]}]},
            "$.steps[0].steps[0].path",
        ),
        (
            {"data": 1, "steps": [{"op": "select", "path": "/a", "default": 1}]},
            "unknown field `default`",
        ),
    ],
)
def test_bad_parameters_are_rejected(params: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        SPEC.decode_params(params)
    assert message in str(caught.value)


def test_the_schema_describes_the_steps_as_a_tagged_union() -> None:
    schema = SPEC.parameters_schema()
    items = schema["$defs"]["TransformParams"]["properties"]["steps"]["items"]
    assert items["discriminator"]["propertyName"] == "op"
    assert sorted(items["discriminator"]["mapping"]) == [
        "default",
        "map",
        "merge",
        "omit",
        "pick",
        "rename",
        "select",
        "set",
    ]
