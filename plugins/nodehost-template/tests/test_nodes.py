"""The template's nodes, run in a real host by nodehost's fixture (once per executor)."""

from __future__ import annotations

import pytest
from nodehost_template import package

from nodehost.testing import Host, WorkflowInvalid

pytestmark = pytest.mark.anyio


async def test_greet(nodehost_host: Host) -> None:
    outcome = await nodehost_host.run_node(package, "acme.template.greet",
                                           {"name": "Ada", "times": 2})
    assert outcome.status == "succeeded", outcome.error
    assert outcome.result == {"greetings": ["hello Ada", "hello Ada"]}
    assert outcome.logs == [("log", "hello Ada"), ("log", "hello Ada")]
    assert [p.fraction for p in outcome.progress] == [0.5, 1.0]


async def test_greet_nobody_says_what_to_do(nodehost_host: Host) -> None:
    outcome = await nodehost_host.run_node(package, "acme.template.greet", {"name": "nobody"})
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.code == "E.TEMPLATE.NOBODY"
    assert outcome.error.remediation == "set the parameter name to a person's name"


async def test_parameters_are_checked(nodehost_host: Host) -> None:
    with pytest.raises(WorkflowInvalid,
                       match=r"parameters\.times: 11 is greater than the maximum of 10"):
        await nodehost_host.run_node(package, "acme.template.greet",
                                     {"name": "Ada", "times": 11})
