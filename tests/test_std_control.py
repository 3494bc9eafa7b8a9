"""nodehost.std.delay and nodehost.std.fail, and what the package registers."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nodehost_std
import pytest
from nodehost_std import package

from nodehost import NodeError, Package
from std_support import Recorder, call, make_ctx

DELAY = package.nodes["nodehost.std.delay"]
FAIL = package.nodes["nodehost.std.fail"]


# --- the package --------------------------------------------------------------------------

NODE_TYPES = {
    "nodehost.std.command": True,
    "nodehost.std.http.request": True,
    "nodehost.std.file.read": False,
    "nodehost.std.file.write": False,
    "nodehost.std.json.transform": False,
    "nodehost.std.delay": True,
    "nodehost.std.fail": False,
}


def test_the_package_registers_exactly_the_seven_node_types() -> None:
    assert isinstance(package, Package)
    assert (package.name, package.version) == ("nodehost.std", "1.0.0")
    assert package.description
    assert set(package.nodes) == set(NODE_TYPES)
    for name, spec in package.nodes.items():
        assert spec.is_async is NODE_TYPES[name], name
        assert spec.description, name
        schema = spec.parameters_schema()
        definition = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
        assert definition["type"] == "object"
        assert definition["additionalProperties"] is False, name
        assert definition["properties"], name
        assert all(key[0].islower() and "_" not in key for key in definition["properties"]), name
        assert spec.results_schema()["$defs"], name


def test_the_entry_point_names_the_package() -> None:
    (entry_point,) = [
        ep
        for ep in importlib.metadata.entry_points(group="nodehost.packages")
        if ep.value == "nodehost_std:package"
    ]
    assert entry_point.name == "std"
    assert entry_point.dist is not None and entry_point.dist.name == "nodehost-std"
    assert entry_point.load() is package


def test_the_package_uses_only_the_public_api() -> None:
    for source in Path(nodehost_std.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("nodehost."), f"{source.name}: {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("nodehost."), f"{source.name}: {alias.name}"


# --- delay --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delay_waits_reports_progress_and_passes_the_value_on() -> None:
    recorder = Recorder()
    started = anyio.current_time()
    params = DELAY.decode_params({"seconds": 0.3, "value": {"batch": 7}})
    result = DELAY.encode_result(await DELAY.fn(make_ctx(DELAY, recorder), params))
    assert anyio.current_time() - started >= 0.3
    assert result["value"] == {"batch": 7}
    assert result["sleptSeconds"] >= 0.3
    fractions = [fraction for fraction, _, _ in recorder.progresses]
    assert fractions == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert recorder.progresses[-1][2] == "waited 0.3 of 0.3 s"


@pytest.mark.anyio
async def test_delay_progress_is_at_most_ten_steps_and_zero_does_not_wait() -> None:
    recorder = Recorder()
    result = DELAY.encode_result(
        await DELAY.fn(make_ctx(DELAY, recorder), DELAY.decode_params({"seconds": 0}))
    )
    assert "value" not in result  # no value given, none passed on
    assert [fraction for fraction, _, _ in recorder.progresses] == [1.0]
    with_null = await DELAY.fn(make_ctx(DELAY), DELAY.decode_params({"seconds": 0, "value": None}))
    assert DELAY.encode_result(with_null)["value"] is None


@pytest.mark.anyio
async def test_delay_is_cancellable() -> None:
    outcome: list[str] = []

    async def node() -> None:
        try:
            await DELAY.fn(make_ctx(DELAY), DELAY.decode_params({"seconds": 3600}))
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(node)
        await anyio.wait_all_tasks_blocked()  # the node is asleep
        tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]
    assert anyio.current_time() - started < 60


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "missing required field `seconds`"),
        ({"seconds": -1}, "$.seconds"),
        ({"seconds": 86_401}, "$.seconds"),
        ({"seconds": "soon"}, "$.seconds"),
        ({"seconds": 1, "values": 2}, "unknown field `values`"),
    ],
)
def test_delay_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        DELAY.decode_params(params)
    assert message in str(caught.value)


# --- fail ---------------------------------------------------------------------------------


def fail(params: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    return call(FAIL, params, attempt=attempt)


def test_fail_fails_with_the_defaults() -> None:
    with pytest.raises(NodeError) as caught:
        fail({})
    assert (caught.value.code, caught.value.message) == ("E.STD.FAIL", "failed on purpose")
    assert caught.value.remediation is None


def test_fail_with_a_given_error() -> None:
    with pytest.raises(NodeError) as caught:
        fail({"code": "E.DEMO.SENSOR", "message": "sensor t1 offline", "remediation": "Replug it."})
    assert caught.value.code == "E.DEMO.SENSOR"
    assert caught.value.message == "sensor t1 offline"
    assert caught.value.remediation == "Replug it."


def test_fail_attempts_fails_the_first_attempts_then_succeeds() -> None:
    for attempt in (1, 2):
        with pytest.raises(NodeError):
            fail({"failAttempts": 2}, attempt=attempt)
    assert fail({"failAttempts": 2}, attempt=3) == {"attempt": 3}
    assert fail({"failAttempts": 0}) == {"attempt": 1}


def test_raise_exception_raises_an_unexpected_error() -> None:
    with pytest.raises(RuntimeError, match="failed on purpose") as caught:
        fail({"raiseException": True})
    assert not isinstance(caught.value, NodeError)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"code": "not a code"}, "$.code"),
        ({"code": ""}, "$.code"),
        ({"message": ""}, "$.message"),
        ({"failAttempts": -1}, "$.failAttempts"),
        ({"raiseException": "yes"}, "$.raiseException"),
        ({"attempts": 1}, "unknown field `attempts`"),
    ],
)
def test_fail_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        FAIL.decode_params(params)
    assert message in str(caught.value)
