"""nodehost.testing: the fixture authors use, in this suite and in an author's own pytest.

The first half uses `nodehost_host` directly (each test runs per executor and per anyio
backend); the second runs small author test files in a pytest of their own (pytester), as
an author's project would, with the plugin loaded through its pytest11 entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodehost import Context, Package
from nodehost.testing import Host, ProgressReport, WorkflowInvalid
from plugin_fixtures import kit_nodes

pytest_plugins = ["pytester", "nodehost.testing"]

package = kit_nodes.package


@pytest.mark.anyio
async def test_run_node_gathers_what_clients_see(nodehost_host: Host) -> None:
    """Results, progress, logs (text and bytes), partials, metrics and artifacts."""
    outcome = await nodehost_host.run_node(package, "t.kit.echo", {"text": "ab", "times": 2})
    assert outcome.status == "succeeded", outcome.error
    assert outcome.result == {"first": "ab", "count": 1, "text": "abab"}
    assert outcome.progress == [ProgressReport(0.25, "starting", "warm-up"),
                                ProgressReport(0.75, "starting", "warm-up")]
    assert outcome.logs == [("log", "a log line"), ("raw", b"\x00\x01")]
    assert outcome.log_text() == "a log line"
    assert outcome.partials == [{"first": "ab"}, {"count": 1}]
    assert outcome.metrics == {"length": 2.0}
    assert outcome.artifacts == [{"resourceId": "echo.txt", "type": "text/plain",
                                  "sizeBytes": 2}]
    assert (outcome.attempts, outcome.error) == (1, None)
    assert [e.type for e in outcome.events] == [
        "node.state", "node.state", "node.result.delta", "node.result.delta",
        "node.result.delta", "node.result.delta", "node.state", "node.state",
        "node.result.snapshot"]


@pytest.mark.anyio
async def test_a_sync_node_and_struct_parameters(nodehost_host: Host) -> None:
    """A sync node reports without await; parameters may be given as a Struct."""
    outcome = await nodehost_host.run_node(package, "t.kit.add", {"a": 2, "b": 3})
    assert (outcome.status, outcome.result) == ("succeeded", {"sum": 5})
    assert outcome.progress == [ProgressReport(0.5, "adding", None)]
    outcome = await nodehost_host.run_node(package, "t.kit.echo", kit_nodes.EchoParams("x"))
    assert outcome.result == {"first": "x", "count": 1, "text": "x"}


@pytest.mark.anyio
async def test_a_node_error_keeps_code_message_and_remediation(nodehost_host: Host) -> None:
    """NodeError arrives as Failure(code, message, remediation, details)."""
    outcome = await nodehost_host.run_node(package, "t.kit.refuse")
    assert (outcome.status, outcome.result) == ("failed", None)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.message, outcome.error.remediation,
            outcome.error.details) == ("E.KIT.REFUSED", "the widget said no", "ask nicely",
                                       {"widget": 7})
    assert str(outcome.error) == "E.KIT.REFUSED: the widget said no (remediation: ask nicely)"


@pytest.mark.anyio
async def test_an_exception_fails_with_its_traceback(nodehost_host: Host) -> None:
    """Any other exception: E.RUNNER.FAILURE, and str(error) shows where it was raised."""
    outcome = await nodehost_host.run_node(package, "t.kit.crash")
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.message) == (
        "E.RUNNER.FAILURE", "ZeroDivisionError: division by zero")
    assert 'kit_nodes.py", line' in str(outcome.error)
    line = Path(kit_nodes.__file__).read_text().splitlines().index(
        '    return {"value": 1 / 0}') + 1
    assert repr(outcome.error) == ("<Failure E.RUNNER.FAILURE: ZeroDivisionError: division by "
                                   f"zero at kit_nodes.py:{line}>")
    assert "return {\"value\": 1 / 0}" in outcome.error.details["traceback"]


@pytest.mark.anyio
async def test_retries_are_counted(nodehost_host: Host) -> None:
    """A node declared with retry=3 succeeds on its third attempt."""
    outcome = await nodehost_host.run_node(package, "t.kit.flaky")
    assert (outcome.status, outcome.attempts, outcome.result) == ("succeeded", 3, {"attempt": 3})


@pytest.mark.anyio
async def test_cancel_when_cancels_the_run(nodehost_host: Host) -> None:
    """The run is cancelled once the predicate holds, as a user cancelling it would."""
    outcome = await nodehost_host.run_node(package, "t.kit.forever",
                                           cancel_when=lambda node: bool(node.progress))
    assert outcome.status == "cancelled"
    assert outcome.progress == [ProgressReport(0.1, "waiting for ever", None)]


@pytest.mark.anyio
async def test_a_broken_cancel_when_fails_the_test(nodehost_host: Host) -> None:
    """An exception in the predicate is raised to the test, not logged and lost."""
    with pytest.raises(KeyError, match="'nope'"):
        await nodehost_host.run_node(
            package, "t.kit.forever",
            cancel_when=lambda node: bool(node.progress) and node.metrics["nope"] > 0)


# The next two are about time running out. In-process only: the timeout must land while
# the node runs, not while a subprocess worker is still starting.


@pytest.mark.anyio
@pytest.mark.parametrize("nodehost_executor", ["inprocess"])
async def test_node_fields_apply_as_in_a_workflow(nodehost_host: Host) -> None:
    """`node={"timeoutSeconds": ...}` gives the node a timeout: it fails with E.TIMEOUT."""
    outcome = await nodehost_host.run_node(package, "t.kit.forever",
                                           node={"timeoutSeconds": 0.05})
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.code == "E.TIMEOUT"


@pytest.mark.anyio
@pytest.mark.parametrize("nodehost_executor", ["inprocess"])
async def test_the_test_timeout_cancels_and_raises(nodehost_host: Host) -> None:
    """A run that outlasts the guard is cancelled, and the test gets a TimeoutError."""
    with pytest.raises(TimeoutError, match=r"^the run did not finish within 0\.05 s \(the "
                       r"timeout of nodehost_host\); node states: node=cancelled \(the test's "
                       r"timeout of 0\.05 s passed\)$"):
        await nodehost_host.run_node(package, "t.kit.forever", timeout=0.05)


@pytest.mark.anyio
async def test_bad_parameters_are_refused_before_running(nodehost_host: Host) -> None:
    """Parameters that do not fit the Struct raise WorkflowInvalid, naming the field."""
    with pytest.raises(WorkflowInvalid) as info:
        await nodehost_host.run_node(package, "t.kit.echo", {"text": 3, "colour": "red"})
    assert [str(issue) for issue in info.value.issues] == [
        "$.nodes[0].parameters.text: 3 is not of type \"string\"",
        "$.nodes[0].parameters.colour: node type 't.kit.echo' has no parameter 'colour' "
        "(it takes ['text', 'times'])",
    ]


@pytest.mark.anyio
async def test_an_unknown_node_type_names_what_exists(nodehost_host: Host) -> None:
    """A typo in the node type says which types the package has."""
    with pytest.raises(ValueError, match=r"^package t\.kit==1\.0\.0 has no node type "
                       r"'t\.kit\.eco'; it provides \['t\.kit\.add', "):
        await nodehost_host.run_node(package, "t.kit.eco")


def workflow(*nodes: dict[str, Any], edges: list[dict[str, Any]] | None = None) -> dict:
    return {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "kit"},
            "nodes": list(nodes), "edges": edges or []}


def kit_node(node_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": f"t.kit.{kind}",
            "package": {"name": "t.kit", "version": "1.0.0"}, **fields}


@pytest.mark.anyio
async def test_run_workflow_passes_data_along_edges(nodehost_host: Host) -> None:
    """A value bound from one node's results reaches the next node's parameters."""
    outcome = await nodehost_host.run_workflow(package, workflow(
        kit_node("first", "add", parameters={"a": 1, "b": 2},
                 ui={"outputPorts": [{"key": "s", "binding": {"path": "/results/sum"}}]}),
        kit_node("second", "add", parameters={"b": 10},
                 ui={"inputPorts": [{"key": "a", "binding": {"path": "/parameters/a"}}]}),
        edges=[{"source": {"node": "first", "port": "s"},
                "target": {"node": "second", "port": "a"}}],
    ))
    assert (outcome.status, outcome.error) == ("succeeded", None)
    assert outcome.nodes["second"].result == {"sum": 13}
    assert outcome.events[0].type == "run.status"


@pytest.mark.anyio
async def test_run_workflow_reports_failure_and_skips(nodehost_host: Host) -> None:
    """A failed node fails the run; its downstream node is skipped with the reason."""
    outcome = await nodehost_host.run_workflow([package], workflow(
        kit_node("no", "refuse"), kit_node("after", "add", parameters={"a": 1, "b": 1}),
        edges=[{"source": {"node": "no"}, "target": {"node": "after"}}],
    ))
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.code == "E.KIT.REFUSED"
    assert outcome.nodes["after"].status == "skipped"
    assert outcome.nodes["after"].error is not None
    assert outcome.nodes["after"].error.message == "upstream 'no' failed"


@pytest.mark.anyio
@pytest.mark.parametrize("nodehost_executor", ["subprocess"])
async def test_a_node_defined_in_a_function_is_refused_for_subprocess(
    nodehost_host: Host,
) -> None:
    """The subprocess executor cannot import a local function: the kit says so up front."""
    local = Package("t.local", "1.0")

    @local.node("t.local.x")
    async def x(ctx: Context, params: dict) -> dict:
        return {}

    with pytest.raises(TypeError, match=r"^node type 't\.local\.x' of t\.local==1\.0 cannot "
                       r"run with the subprocess executor: its function test_testing_kit\."
                       r"test_a_node_defined_in_a_function_is_refused_for_subprocess\.<locals>"
                       r"\.x is not importable"):
        await nodehost_host.run_node(local, "t.local.x")


def test_host_refuses_an_unknown_executor() -> None:
    """Only the executors nodehost has."""
    with pytest.raises(ValueError, match=r"executor must be one of \('inprocess', "
                       r"'subprocess'\), not 'dask'"):
        Host("dask")


# --- in an author's own pytest ----------------------------------------------------------------

AUTHOR_NODES = '''
import msgspec
from nodehost import Context, NodeError, Package

package = Package("acme.kit", "0.1.0")


class Hello(msgspec.Struct):
    name: str


@package.node("acme.kit.hello")
async def hello(ctx: Context, params: Hello) -> dict:
    await ctx.progress(0.5, "thinking")
    return {"greeting": f"hello {params.name}"}


@package.node("acme.kit.broken")
def broken(ctx: Context, params: dict) -> dict:
    raise NodeError("E.ACME.BROKEN", "it broke", remediation="fix it")
'''

AUTHOR_TESTS = '''
import pytest
from acme_kit import package

pytestmark = pytest.mark.anyio


async def test_hello(nodehost_host):
    outcome = await nodehost_host.run_node(package, "acme.kit.hello", {"name": "ada"})
    assert outcome.status == "succeeded", outcome.error
    assert outcome.result == {"greeting": "hello ada"}
    assert [p.fraction for p in outcome.progress] == [0.5]
'''


@pytest.fixture
def author(pytester: pytest.Pytester) -> pytest.Pytester:
    """An author's project: their package module next to their tests."""
    pytester.makepyfile(acme_kit=AUTHOR_NODES)
    pytester.syspathinsert()
    return pytester


def test_an_author_test_runs_in_both_executors(author: pytest.Pytester) -> None:
    """With nodehost installed, the fixture is there (entry point) and runs each executor."""
    author.makepyfile(test_author=AUTHOR_TESTS)
    result = author.runpytest("-v", "-W", "error")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random([
        "*test_hello?asyncio-inprocess? PASSED*", "*test_hello?asyncio-subprocess? PASSED*",
        "*test_hello?trio-inprocess? PASSED*", "*test_hello?trio-subprocess? PASSED*",
    ])


def test_a_failing_author_test_shows_the_node_error(author: pytest.Pytester) -> None:
    """`assert outcome.status == "succeeded", outcome.error` shows code and remediation."""
    author.makepyfile(test_author='''
import pytest
from acme_kit import package

@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_broken(nodehost_host):
    outcome = await nodehost_host.run_node(package, "acme.kit.broken")
    assert outcome.status == "succeeded", outcome.error
''')
    result = author.runpytest("-W", "error")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["E * AssertionError: <Failure E.ACME.BROKEN: it broke "
                                 "(remediation: fix it)>"])


def test_an_author_may_run_one_executor_only(author: pytest.Pytester) -> None:
    """Parametrizing nodehost_executor overrides the fixture's two executors."""
    author.makepyfile(test_author=AUTHOR_TESTS.replace(
        "async def test_hello", '@pytest.mark.parametrize("nodehost_executor", ["inprocess"])\n'
        "async def test_hello"))
    result = author.runpytest("-v", "-W", "error")
    result.assert_outcomes(passed=2)
    assert "subprocess" not in result.stdout.str()


def test_the_plugin_can_be_turned_off(author: pytest.Pytester) -> None:
    """`-p no:nodehost.testing` removes the fixture (the entry point is named for that)."""
    author.makepyfile(test_author=AUTHOR_TESTS)
    result = author.runpytest("-p", "no:nodehost.testing")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'nodehost_host' not found*"])
