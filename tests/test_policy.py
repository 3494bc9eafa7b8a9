"""[policy]: which node types a tenant's workflows may use, refused at admission with the
node's path and the rule that refused it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from hosts import local_host
from http_support import api_client, doc, node
from nodehost import Context, Package
from nodehost.cli import main
from nodehost.config import Config, PolicyConfig
from nodehost.errors import WorkflowInvalid
from nodehost.plugins import Catalog
from nodehost.policy import Policy

pkg = Package("t.policy", "1.0")


@pkg.node("t.policy.safe")
async def safe(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    return {}


@pkg.node("t.policy.host", privileged=True)
async def host_node(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    return {"ran": True}


def policy(toml: str) -> Policy:
    return Policy(msgspec.toml.decode(toml.encode(), type=Config).policy)


def tnode(node_id: str, type: str) -> dict[str, Any]:
    return {"id": node_id, "type": type, "package": {"name": "t.policy", "version": "1.0"}}


def workflow(*nodes: dict[str, Any], subgraphs: list[dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    return {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "p"},
            "nodes": list(nodes), "subgraphs": subgraphs or []}


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(pkg)
    return cat


# --- the rules -----------------------------------------------------------------------------


def test_by_default_every_node_type_is_allowed_but_privileged_ones() -> None:
    rules = Policy(PolicyConfig())
    assert rules.verdict("default", "t.policy.safe").allowed
    refused = rules.verdict("default", "t.policy.host", privileged=True)
    assert not refused.allowed
    assert refused.reason == "it is host-privileged and no glob of [policy] privileged matches it"


def test_deny_wins_and_a_tenant_narrows_the_global_rules() -> None:
    rules = policy("""
[policy]
allow = ["t.*", "nodehost.std.*"]
deny = ["nodehost.std.command"]
privileged = ["t.policy.host"]
[policy.tenants.b]
allow = ["nodehost.std.json.*"]
""")
    assert rules.verdict("a", "t.policy.host", privileged=True).allowed
    assert rules.verdict("a", "nodehost.std.command").reason == (
        "[policy] deny 'nodehost.std.command'")
    assert rules.verdict("a", "other.node").reason == "no glob of [policy] allow matches it"
    assert rules.verdict("b", "nodehost.std.json.transform").allowed
    assert rules.verdict("b", "t.policy.safe").reason == (
        "no glob of [policy.tenants.b] allow matches it")
    # privileged needs both levels: b's rules do not name it
    assert not rules.verdict("b", "t.policy.host", privileged=True).allowed


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "300.1.2.3", "no spaces.example", "::g"])
def test_a_bad_http_allow_entry_names_the_key(entry: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"http_allow\[1\].*sandbox"):
        msgspec.toml.decode(f'[sandbox]\nhttp_allow = ["10.1.0.0/16", "{entry}"]\n'.encode(),
                            type=Config)


def test_http_allow_takes_addresses_networks_and_host_names() -> None:
    entries = ["127.0.0.1", "10.0.0.0/8", "fd00::/8", "::1", "intranet.example",
               "*.corp.example", "localhost"]
    config = msgspec.toml.decode(f"[sandbox]\nhttp_allow = {entries!r}\n".replace("'", '"')
                                 .encode(), type=Config)
    assert config.sandbox.http_allow == entries


def test_a_bad_glob_in_the_config_names_the_key() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"policy.deny\[0\]"):
        msgspec.toml.decode(b'[policy]\ndeny = ["a b"]\n', type=Config)


# --- at admission --------------------------------------------------------------------------


def test_a_refused_node_type_is_reported_at_its_path_with_the_rule(tmp_path: Path) -> None:
    host = local_host(catalog())
    document = {"clientId": "c", "workflow": workflow(
        tnode("ok", "t.policy.safe"),
        {"id": "box", "type": "workflow.container", "containerConfig": {"subgraphId": "inner"}},
        subgraphs=[{"id": "inner", "definition": {"nodes": [tnode("deep", "t.policy.host")]}}])}
    with pytest.raises(WorkflowInvalid) as info:
        host.submit(document)
    [issue] = info.value.issues
    assert issue.path == "$.workflow.subgraphs[0].definition.nodes[0].type"
    assert "'t.policy.host' is not allowed for tenant 'default'" in issue.message
    assert "privileged" in issue.message
    assert host.engine.runs == {}


@pytest.mark.anyio
async def test_an_explicit_privileged_allow_lets_the_node_run() -> None:
    host = local_host(catalog())
    host.policy = policy('[policy]\nprivileged = ["t.policy.host"]\n')
    async with host.running():
        run = await host.run(workflow(tnode("h", "t.policy.host")))
    assert run.status == "succeeded"


@pytest.mark.anyio
async def test_over_http_a_refused_type_is_a_400_for_that_tenant_only() -> None:
    token_a, token_b = "a" * 20, "b" * 20
    async with api_client(tokens={token_a: "a", token_b: "b"}, require_token=True) as t:
        t.host.policy = policy('[policy.tenants.b]\nallow = ["nodehost.std.delay"]\n')
        transform = node("t", "nodehost.std.json.transform", data={}, steps=[])
        refused = await t.client.post("/api/v1/runs", json=doc(node("d"), transform),
                                      headers={"Authorization": f"Bearer {token_b}"})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_workflow"
        [detail] = refused.json()["details"]
        assert detail["path"] == "$.workflow.nodes[1].type"
        assert "[policy.tenants.b] allow" in detail["message"]
        accepted = await t.client.post("/api/v1/runs", json=doc(node("d"), transform),
                                       headers={"Authorization": f"Bearer {token_a}"})
        assert accepted.status_code == 202, accepted.text


# --- the CLI -------------------------------------------------------------------------------


def test_validate_holds_a_document_to_a_tenants_policy(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[policy.tenants.b]\nallow = ["nodehost.std.delay"]\n'
                      '[executors]\ndefault = "inprocess"\n')
    document = tmp_path / "wf.json"
    document.write_text(json.dumps(doc(node("d"), node("t", "nodehost.std.json.transform",
                                                       data={}, steps=[]))))
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(document), "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(main, ["validate", str(document), "--config", str(config),
                                   "--tenant", "b", "-o", "json"])
    assert refused.exit_code == 2
    [issue] = json.loads(refused.output)["issues"]
    assert issue["path"] == "$.workflow.nodes[1].type"
    assert "not allowed for tenant 'b'" in issue["message"]


def test_packages_shows_what_each_tenant_may_use(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[policy.tenants.b]\nallow = ["nodehost.std.delay"]\n')
    result = CliRunner().invoke(main, ["packages", "--config", str(config), "-o", "json"])
    std = next(p for p in json.loads(result.output)["packages"] if p["name"] == "nodehost.std")
    nodes = {n["type"]: n for n in std["nodes"]}
    assert nodes["nodehost.std.delay"]["allowedFor"] == ["b", "default"]
    transform = nodes["nodehost.std.json.transform"]
    assert transform["allowedFor"] == ["default"]
    assert transform["refusedFor"] == {"b": "no glob of [policy.tenants.b] allow matches it"}
