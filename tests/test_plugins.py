"""Loading node packages from entry points, as installed distributions present them.

Each test installs fake distributions (a dist-info directory naming a module of
tests/plugin_fixtures) into a directory it puts first on sys.path, then loads them the way
the daemon does. nodehost-std, installed in the test environment, loads alongside.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from hosts import local_host
from nodehost import Context, Package, hookimpl
from nodehost.cli import main
from nodehost.errors import PluginLoadError, WorkflowInvalid
from nodehost.plugins import Catalog, LoadReport, PluginHost, version_key
from plugin_fixtures import install

Dist = tuple[str, str, dict[str, str]]  # name, version, entry points
_sites = itertools.count()


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install fake distributions into a new directory at the front of sys.path."""

    def installed(*dists: Dist) -> Path:
        site = tmp_path / f"site{next(_sites)}"
        site.mkdir()
        for name, version, eps in dists:
            install(site, name, version, eps)
        monkeypatch.syspath_prepend(str(site))  # also invalidates the import caches
        return site

    return installed


def load(**kw: Any) -> tuple[PluginHost, dict[str, LoadReport]]:
    host = PluginHost()
    reports = host.load_entry_points(**kw)
    return host, {r.plugin: r for r in reports}


GOOD: Dist = ("acme-good", "1.0.0", {"nodes": "plugin_fixtures.good:package"})


def test_a_good_distribution_provides_its_package(installed: Callable[..., Path]) -> None:
    """An entry point naming a Package puts its node types in the catalog, by origin."""
    installed(GOOD)
    host, reports = load()
    assert reports["acme-good==1.0.0:nodes"] == LoadReport(
        "acme-good==1.0.0:nodes", True, ("acme.good==1.0.0",))
    spec = host.catalog.get("acme.good", "1.0.0", "acme.good.greet")
    assert spec is not None and spec.description == "Say hello to someone."
    assert host.catalog.origin("acme.good", "1.0.0") == "acme-good==1.0.0:nodes"
    assert reports["nodehost-std==1.0.0:std"].packages == ("nodehost.std==1.0.0",)


def test_hook_nodehost_register_packages(installed: Callable[..., Path]) -> None:
    """A module implementing `nodehost_register_packages` registers through `register`."""
    installed(("acme-hooked", "0.3.0", {"hooked": "plugin_fixtures.hooks"}))
    host, reports = load()
    assert reports["acme-hooked==0.3.0:hooked"].packages == ("acme.hooked==0.3.0",)
    assert host.catalog.types("acme.hooked", "0.3.0") == ["acme.hooked.ping"]
    assert host.pm.has_plugin("acme-hooked==0.3.0:hooked")


BROKEN: list[tuple[Dist, str]] = [
    (("acme-missing-dep", "0.1.0", {"nodes": "plugin_fixtures.import_fails"}),
     "ModuleNotFoundError: No module named 'nodehost_no_such_dependency'"),
    (("acme-raises", "2.0.0", {"nodes": "plugin_fixtures.hook_raises"}),
     "RuntimeError: no licence key: set ACME_LICENCE"),
    (("acme-dict", "1.0.0", {"nodes": "plugin_fixtures.not_a_package"}),
     "TypeError: it registered {'name': 'acme.dict', 'version': '1.0'} (a dict), which is "
     "not a nodehost.Package"),
    (("acme-typo", "1.0.0", {"nodes": "plugin_fixtures.misspelt"}),
     "'nodehost_register_package' is not a nodehost hook (did you mean "
     "'nodehost_register_packages'?)"),
    (("acme-forgot", "1.0.0", {"nodes": "plugin_fixtures.no_hooks"}),
     "module plugin_fixtures.no_hooks is neither a nodehost.Package nor has any nodehost hook "
     "implementations (did the entry point mean 'plugin_fixtures.no_hooks:package'?)"),
    (("acme-attr", "1.0.0", {"nodes": "plugin_fixtures.good:pakage"}),
     "AttributeError: module 'plugin_fixtures.good' has no attribute 'pakage'"),
]


@pytest.mark.parametrize(("dist", "error"), BROKEN, ids=[d[0][0] for d in BROKEN])
def test_a_broken_plugin_is_reported_and_the_others_load(
    installed: Callable[..., Path], dist: Dist, error: str
) -> None:
    """A broken plugin is named with its dist==version and why; the good one still loads."""
    installed(dist, GOOD)
    host, reports = load()
    name = f"{dist[0]}=={dist[1]}:nodes"
    assert reports[name] == LoadReport(name, False, error=error)
    assert reports["acme-good==1.0.0:nodes"].ok
    assert host.catalog.get("acme.good", "1.0.0", "acme.good.greet") is not None
    assert not host.pm.has_plugin(name)  # a half-registered plugin is taken out again


def test_every_broken_plugin_at_once(installed: Callable[..., Path]) -> None:
    """Several broken plugins are all reported; nothing of theirs is in the catalog."""
    installed(*(dist for dist, _ in BROKEN), GOOD)
    host, reports = load()
    failed = sorted(r.plugin for r in reports.values() if not r.ok)
    assert failed == sorted(f"{d[0]}=={d[1]}:nodes" for d, _ in BROKEN)
    assert host.catalog.packages() == [("acme.good", "1.0.0"), ("nodehost.std", "1.0.0")]
    assert host.catalog.versions("acme.typo") == []


def test_a_hook_with_wrong_argument_names_is_reported(tmp_path: Path) -> None:
    """pluggy's complaint about a hook's arguments names the plugin, not a traceback."""

    class Plugin:
        @hookimpl
        def nodehost_register_packages(self, registry: Any) -> None:
            pass

    with pytest.raises(PluginLoadError) as info:
        PluginHost().add(Plugin(), name="acme-args==1.0:nodes")
    assert info.value.plugin == "acme-args==1.0:nodes"
    assert "Argument(s) {'registry'} are declared in the hookimpl" in info.value.message


def test_the_same_node_type_from_two_distributions_stops_start_up(
    installed: Callable[..., Path]
) -> None:
    """Two distributions providing one (package, version): an error naming both."""
    installed(("acme-dup-a", "1.0.0", {"nodes": "plugin_fixtures.duplicate:first"}),
              ("acme-dup-b", "3.1.0", {"nodes": "plugin_fixtures.duplicate:second"}))
    with pytest.raises(PluginLoadError) as info:
        load()
    message = str(info.value)
    assert "package acme.dup==1.0.0 is already provided by" in message
    assert "acme-dup-a==1.0.0:nodes" in message and "acme-dup-b==3.1.0:nodes" in message


def test_the_same_package_object_named_twice_is_no_conflict(
    installed: Callable[..., Path]
) -> None:
    """Two entry points naming one Package object register it once (the first origin)."""
    installed(("acme-good", "1.0.0", {"a": "plugin_fixtures.good:package",
                                      "b": "plugin_fixtures.good:package"}))
    host, reports = load()
    assert reports["acme-good==1.0.0:a"].ok and reports["acme-good==1.0.0:b"].ok
    assert host.catalog.origin("acme.good", "1.0.0") == "acme-good==1.0.0:a"


@pytest.mark.anyio
async def test_two_versions_of_a_package_are_served_side_by_side(
    installed: Callable[..., Path]
) -> None:
    """Versions from two distributions coexist; a workflow pins each node to one of them."""
    installed(("acme-vision-legacy", "1.0.0", {"v1": "plugin_fixtures.vision_v1:package"}),
              ("acme-vision", "2.0.0", {"v2": "plugin_fixtures.vision_v2:package"}))
    host, _ = load()
    assert host.catalog.versions("acme.vision") == ["1.0.0", "2.0.0"]
    assert host.catalog.origin("acme.vision", "1.0.0") == "acme-vision-legacy==1.0.0:v1"

    def doc(*versions: str) -> dict[str, Any]:
        return {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "v"}, "nodes": [
            {"id": f"d{i}", "type": "acme.vision.detect",
             "package": {"name": "acme.vision", "version": v}}
            for i, v in enumerate(versions)]}

    with pytest.raises(WorkflowInvalid) as info:
        local_host(host.catalog).submit(doc("1.0.0", "3.0.0"))
    assert [str(i) for i in info.value.issues] == [
        "$.nodes[1].package.version: package 'acme.vision' has no version '3.0.0'; "
        "installed: ['1.0.0', '2.0.0']"]

    async with local_host(host.catalog).running() as embedded:
        done = await embedded.run(doc("1.0.0", "2.0.0"))
    assert {t: task.result for t, task in done.tasks.items()} == {
        "d0": {"model": "v1"}, "d1": {"model": "v2"}}


def test_the_first_copy_of_a_distribution_on_sys_path_wins(
    installed: Callable[..., Path]
) -> None:
    """An older copy of a distribution further down sys.path is not loaded as well."""
    installed(("acme-vision", "1.0.0", {"v": "plugin_fixtures.vision_v1:package"}))
    installed(("acme-vision", "2.0.0", {"v": "plugin_fixtures.vision_v2:package"}))
    host, reports = load()
    assert "acme-vision==2.0.0:v" in reports and "acme-vision==1.0.0:v" not in reports
    assert host.catalog.versions("acme.vision") == ["2.0.0"]


def test_allow_list_loads_only_the_named_distributions(installed: Callable[..., Path]) -> None:
    """`allow` is by distribution name, normalised; the rest are skipped, with the reason."""
    installed(GOOD, ("acme-hooked", "0.3.0", {"hooked": "plugin_fixtures.hooks"}),
              BROKEN[0][0])
    host, reports = load(allow=["Acme_Good"])
    assert host.catalog.packages() == [("acme.good", "1.0.0")]
    assert reports["acme-hooked==0.3.0"] == LoadReport(
        "acme-hooked==0.3.0", True, skipped="not in [plugins] allow")
    assert reports["acme-missing-dep==0.1.0"].skipped == "not in [plugins] allow"
    assert reports["nodehost-std==1.0.0"].skipped == "not in [plugins] allow"


def test_allow_list_naming_nothing_installed_is_reported(
    installed: Callable[..., Path]
) -> None:
    """A typo in the allow list is reported rather than silently loading nothing."""
    installed(GOOD)
    _, reports = load(allow=["acme-god"])
    assert reports["acme-god"] == LoadReport("acme-god", False, error=(
        "named in [plugins] allow, but no installed distribution of that name has "
        "'nodehost.packages' entry points"))


def test_deny_list_skips_a_distribution(installed: Callable[..., Path]) -> None:
    """`deny` keeps a distribution out, even a broken one (it is not imported at all)."""
    installed(GOOD, BROKEN[0][0])
    host, reports = load(deny=["acme.missing.dep", "nodehost-std"])
    assert reports["acme-missing-dep==0.1.0"].skipped == "denied by [plugins] deny"
    assert all(r.ok for r in reports.values())
    assert host.catalog.packages() == [("acme.good", "1.0.0")]


# --- the catalog ---------------------------------------------------------------------------


def package_with(name: str, version: str, *types: str) -> Package:
    package = Package(name, version)
    for t in types:
        package.node(t)(lambda ctx, params: {})
    return package


def test_a_package_version_has_one_provider() -> None:
    """A second provider of a package version is refused naming both, even with other node
    types: which of them is "p==1" would otherwise depend on load order."""
    catalog = Catalog()
    catalog.add(package_with("p", "1", "p.a"), origin="dist-a==1:x")
    with pytest.raises(PluginLoadError, match=r"^dist-b==1:x: package p==1 is already "
                       r"provided by dist-a==1:x$"):
        catalog.add(package_with("p", "1", "p.b"), origin="dist-b==1:x")
    assert catalog.types("p", "1") == ["p.a"]  # nothing of the refused one was added
    assert catalog.origin("p", "1") == "dist-a==1:x"


def test_a_renamed_distribution_with_the_same_module_is_refused_loudly(
    installed: Callable[..., Path]
) -> None:
    """acme-good 1.0.0 and acme-good-next 2.0.0 both `import plugin_fixtures.good`: one
    interpreter can import one of them only, so start-up stops naming both distributions
    (rather than crediting the package to whichever came first)."""
    installed(("acme-good", "1.0.0", {"nodes": "plugin_fixtures.good:package"}),
              ("acme-good-next", "2.0.0", {"nodes": "plugin_fixtures.good:package"}))
    with pytest.raises(PluginLoadError) as info:
        load()
    message = str(info.value)
    assert "acme-good==1.0.0:nodes" in message and "acme-good-next==2.0.0:nodes" in message
    assert "share that import name" in message and "nodehost packages install" in message


def test_versions_sort_as_versions() -> None:
    """1.10 comes after 1.9, and a pre-release before its release (PEP 440 order)."""
    catalog = Catalog()
    for v in ("1.10.0", "1.9.0", "2.0.0", "1.9.0rc1"):
        catalog.add(package_with("p", v, "p.t"))
    assert catalog.versions("p") == ["1.9.0rc1", "1.9.0", "1.10.0", "2.0.0"]
    ordered = ["1.0.dev1", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1", "1.0.1", "10"]
    assert sorted(reversed(ordered), key=version_key) == ordered


# --- JSON Schema of parameters and results ----------------------------------------------------


class Params(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """What to detect."""

    image_url: str
    threshold: float = 0.5


class Box(msgspec.Struct):
    x: int
    y: int


class Found(msgspec.Struct):
    boxes: list[Box]


SCHEMA_CASES = Package("t.schemas", "1.0")


@SCHEMA_CASES.node("t.struct")
async def struct_node(ctx: Context, params: Params) -> Found:
    return Found([])


@SCHEMA_CASES.node("t.dicts")
async def dict_node(ctx: Context, params: dict[str, Any]) -> dict:
    return {}


@SCHEMA_CASES.node("t.bare")
async def bare_node(ctx, params):  # type: ignore[no-untyped-def]
    return None


@SCHEMA_CASES.node("t.typed_dict")
async def typed_dict_node(ctx: Context, params: dict[str, int]) -> Found | None:
    return None


@SCHEMA_CASES.node("t.scalar")
async def scalar_node(ctx: Context, params: dict) -> int:
    return 3


def schemas(node_type: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = SCHEMA_CASES.nodes[node_type]
    return spec.parameters_schema(), spec.results_schema()


def test_schema_of_struct_parameters_and_results() -> None:
    """Struct annotations give msgspec's schema: wire names, defaults, required, nesting."""
    params, results = schemas("t.struct")
    assert params == {"$ref": "#/$defs/Params", "$defs": {"Params": {
        "title": "Params", "description": "What to detect.", "type": "object",
        "properties": {"imageUrl": {"type": "string"},
                       "threshold": {"type": "number", "default": 0.5}},
        "required": ["imageUrl"], "additionalProperties": False}}}
    assert results["$ref"] == "#/$defs/Found"
    assert results["$defs"]["Box"]["required"] == ["x", "y"]


def test_schema_of_dict_and_missing_annotations_is_any_object() -> None:
    """A plain dict, dict[str, Any] or no annotation at all: any JSON object."""
    assert schemas("t.dicts") == ({"type": "object"}, {"type": "object"})
    assert schemas("t.bare") == ({"type": "object"}, {"type": "object"})


def test_schema_of_typed_dict_and_optional_results() -> None:
    """dict[str, int] is checked; `Found | None` results publish Found (None gives {})."""
    params, results = schemas("t.typed_dict")
    assert params == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert results["$ref"] == "#/$defs/Found"
    assert SCHEMA_CASES.nodes["t.typed_dict"].decode_params({"a": "2"}) == {"a": 2}
    with pytest.raises(msgspec.ValidationError,
                       match=r"Expected `int`, got `str` - at `\$\[\.\.\.\]`"):
        SCHEMA_CASES.nodes["t.typed_dict"].decode_params({"a": "two"})


def test_schema_of_a_scalar_result_describes_the_value_key() -> None:
    """A node returning an int publishes {"value": n}, and its schema says exactly that."""
    _, results = schemas("t.scalar")
    assert results == {"type": "object", "properties": {"value": {"type": "integer"}},
                       "required": ["value"]}
    assert SCHEMA_CASES.nodes["t.scalar"].encode_result(3) == {"value": 3}


def test_parameters_that_are_not_an_object_are_refused_at_registration() -> None:
    """Parameters are a JSON object: an int or array-like annotation fails at import time."""
    package = Package("t.bad", "1.0")

    class Row(msgspec.Struct, array_like=True):
        x: int

    with pytest.raises(TypeError, match=r"^node 't\.int': parameters: int is not an object "
                       r"type: parameters are a JSON object, so annotate them with a msgspec "
                       r"Struct \(or a dict\)$"):
        package.node("t.int")(lambda_node(int))
    with pytest.raises(TypeError, match=r"^node 't\.row': parameters: Row is not an object"):
        package.node("t.row")(lambda_node(Row))

    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"^node 't\.opaque': parameters: msgspec cannot "
                       r"describe Opaque: type .*Opaque'> is not supported$"):
        package.node("t.opaque")(lambda_node(Opaque))
    assert package.nodes == {}


def lambda_node(params_type: type) -> Callable[..., Any]:
    def node(ctx: Context, params: Any) -> dict:
        return {}

    node.__annotations__ = {"ctx": Context, "params": params_type, "return": dict}
    return node


# --- `nodehost packages` ---------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["packages", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


STD_TYPES = ["nodehost.std.command", "nodehost.std.delay", "nodehost.std.fail",
             "nodehost.std.file.read", "nodehost.std.file.write", "nodehost.std.http.request",
             "nodehost.std.json.transform"]


def test_packages_lists_std_with_its_seven_node_types() -> None:
    """The human listing: package, version, origin, executor, then each type's one-liner."""
    code, out, _ = invoke()
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "nodehost.std 1.0.0  (nodehost-std==1.0.0:std; runs inprocess)"
    assert lines[1].startswith("  Standard nodes: run a command")
    listed = [line.split()[0] for line in lines[2:] if line.startswith("    nodehost.")]
    assert listed == STD_TYPES
    assert "nodehost.std.delay           Wait for a number of seconds" in out
    # the one host-privileged type says so, under its line
    command = lines.index(next(x for x in lines if x.startswith("    nodehost.std.command")))
    assert lines[command + 1].strip() == "[privileged; allowed for: no tenant]"


def test_packages_json_describes_every_node_type() -> None:
    """-o json: packages with nodes, timeouts, retries and both JSON Schemas; no errors."""
    code, out, _ = invoke("-o", "json")
    assert code == 0
    report = json.loads(out)
    assert report["errors"] == [] and report["skipped"] == []
    (std,) = report["packages"]
    assert {k: std[k] for k in ("name", "version", "origin", "executor")} == {
        "name": "nodehost.std", "version": "1.0.0", "origin": "nodehost-std==1.0.0:std",
        "executor": "inprocess"}
    assert [n["type"] for n in std["nodes"]] == STD_TYPES
    delay = std["nodes"][1]
    assert set(delay) == {"type", "description", "timeout", "retry", "idempotent",
                          "privileged", "parametersSchema", "resultsSchema", "allowedFor",
                          "refusedFor"}
    assert (delay["retry"], delay["idempotent"], delay["timeout"]) == (1, True, None)
    assert (delay["privileged"], delay["allowedFor"], delay["refusedFor"]) == (
        False, ["default"], {})
    defs = delay["parametersSchema"]["$defs"]
    assert "seconds" in defs[delay["parametersSchema"]["$ref"].rsplit("/", 1)[1]]["properties"]


def test_packages_lists_broken_plugins_as_not_loaded(installed: Callable[..., Path]) -> None:
    """A broken plugin shows under "not loaded" with its dist==version, and exits 1."""
    installed(GOOD, BROKEN[1][0])
    code, out, _ = invoke()
    assert code == 1
    assert "acme.good 1.0.0  (acme-good==1.0.0:nodes; runs subprocess)" in out
    assert "    acme.good.greet  Say hello to someone." in out
    assert out.split("\nnot loaded:\n")[1] == (
        "  acme-raises==2.0.0:nodes: RuntimeError: no licence key: set ACME_LICENCE\n")
    code, out, _ = invoke("-o", "json")
    assert code == 1
    report = json.loads(out)
    assert report["errors"] == [{"plugin": "acme-raises==2.0.0:nodes",
                                 "error": "RuntimeError: no licence key: set ACME_LICENCE"}]
    good = next(p for p in report["packages"] if p["name"] == "acme.good")
    assert good["nodes"][0] | {"parametersSchema": None, "resultsSchema": None} == {
        "type": "acme.good.greet", "description": "Say hello to someone.", "timeout": 5.0,
        "retry": 2, "idempotent": True, "parametersSchema": None, "resultsSchema": None,
        "privileged": False, "allowedFor": ["default"], "refusedFor": {}}


def test_run_and_validate_warn_about_a_broken_plugin_and_go_on(
    installed: Callable[..., Path], tmp_path: Path
) -> None:
    """Other commands name the broken plugin on stderr and work with the rest."""
    installed(BROKEN[0][0])
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({
        "id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "w"},
        "nodes": [{"id": "d", "type": "nodehost.std.delay", "parameters": {"seconds": 0},
                   "package": {"name": "nodehost.std", "version": "1.0.0"}}]}))
    result = CliRunner().invoke(main, ["validate", str(workflow)])
    assert result.exit_code == 0
    assert " ".join(result.stderr.split()) == (  # rich wraps it at the console's width
        "warning: plugin acme-missing-dep==0.1.0:nodes not loaded: ModuleNotFoundError: No "
        "module named 'nodehost_no_such_dependency'")


def test_packages_follows_the_config_deny_list(tmp_path: Path) -> None:
    """[plugins] deny in the config file keeps std out; it is listed as skipped."""
    config = tmp_path / "config.toml"
    config.write_text('[plugins]\ndeny = ["nodehost-std"]\n')
    code, out, _ = invoke("--config", str(config))
    assert code == 0
    assert out == ("no node packages installed\n\nskipped:\n"
                   "  nodehost-std==1.0.0: denied by [plugins] deny\n")


def test_packages_conflict_exits_2_naming_both(installed: Callable[..., Path]) -> None:
    """Conflicting distributions: exit 2 and the message names both of them."""
    installed(("acme-dup-a", "1.0.0", {"nodes": "plugin_fixtures.duplicate:first"}),
              ("acme-dup-b", "3.1.0", {"nodes": "plugin_fixtures.duplicate:second"}))
    code, _, err = invoke()
    assert code == 2
    assert "error: node packages conflict:" in err
    assert "acme-dup-a==1.0.0:nodes" in err and "acme-dup-b==3.1.0:nodes" in err



def test_a_second_copy_of_a_distribution_is_reported_not_lost(
        installed: Callable[..., Path]) -> None:
    """Two copies of one distribution on sys.path (an editable and a regular install, a
    PYTHONPATH layer): the first is loaded, the other is reported with both places."""
    later = installed(("acme-good", "2.0.0", {"nodes": "plugin_fixtures.good:package"}))
    first = installed(GOOD)  # prepended: first on sys.path
    host, reports = load()
    assert reports["acme-good==1.0.0:nodes"].ok
    assert host.catalog.origin("acme.good", "1.0.0") == "acme-good==1.0.0:nodes"
    [shadowed] = [r for r in reports.values() if r.plugin.startswith("acme-good==2.0.0")]
    assert not shadowed.ok
    assert str(later) in shadowed.plugin
    assert shadowed.error is not None
    assert f"shadowed by acme-good==1.0.0 ({first})" in shadowed.error
