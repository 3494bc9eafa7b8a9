"""The contract with node package authors: what they import, the hooks, and their docs.

As anyio checks that `__all__` is exact and datasette fails a build when a hook has no test
or no documentation, these tests fail when the public surface changes by accident.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import nodehost
import nodehost.testing
from nodehost import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "writing-node-packages.md"
PUBLIC_MODULES = [nodehost, nodehost.testing]


def test_the_public_api_is_exactly_these_names() -> None:
    """`from nodehost import *` gives authors Package, Context, NodeError and hookimpl."""
    assert nodehost.__all__ == ["Context", "NodeError", "Package", "hookimpl"]
    namespace: dict[str, object] = {}
    exec("from nodehost import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == nodehost.__all__


def test_the_package_namespace_holds_nothing_else() -> None:
    """Apart from submodules and dunders, `nodehost` holds exactly `__all__`."""
    public = {name for name, value in vars(nodehost).items()
              if not name.startswith("_") and not isinstance(value, ModuleType)}
    assert public == set(nodehost.__all__)


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_exact_and_documented(module: ModuleType) -> None:
    """__all__ is sorted and resolves; whatever the module defines publicly is in it."""
    names = module.__all__
    assert names == sorted(names)
    defined = {name for name, value in vars(module).items()
               if not name.startswith("_") and getattr(value, "__module__", None) ==
               module.__name__ and not name.startswith("nodehost_")}  # fixtures: see below
    assert defined <= set(names)
    for name in names:
        value = getattr(module, name)
        if callable(value):
            assert inspect.getdoc(value), f"{module.__name__}.{name} has no docstring"


def test_the_test_kit_fixtures() -> None:
    """nodehost.testing provides the fixtures nodehost_host and nodehost_executor."""
    fixtures = sorted(name for name in vars(nodehost.testing) if name.startswith("nodehost_"))
    assert fixtures == ["nodehost_executor", "nodehost_host"]
    assert nodehost.testing.EXECUTORS == ("inprocess", "subprocess")


def test_hookspecs_are_plain_prefixed_functions() -> None:
    """Every hook is named nodehost_*, documented, and takes keyword-callable arguments."""
    for name, spec in hook_specs().items():
        assert name.startswith("nodehost_")
        assert inspect.getdoc(spec), name


def hook_specs() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, marker)}


def test_every_hook_has_a_test() -> None:
    """Each hookspec has a test named test_hook_<name> somewhere in tests/."""
    tests = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        tests |= {node.name for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    missing = [name for name in hook_specs() if f"test_hook_{name}" not in tests]
    assert missing == [], f"hooks without a test_hook_<name> test: {missing}"


def test_every_hook_is_documented_with_its_arguments() -> None:
    """docs/writing-node-packages.md has a `### name(args)` heading per hook, args as specced."""
    documented = dict(re.findall(r"^### `(nodehost_\w+)\(([^)]*)\)`$", DOCS.read_text(), re.M))
    for name, spec in hook_specs().items():
        assert name in documented, f"{name} is not documented in {DOCS.name}"
        args = [a.strip() for a in documented[name].split(",") if a.strip()]
        assert args == list(inspect.signature(spec).parameters), name  # type: ignore[arg-type]
    assert set(documented) <= set(hook_specs()), "a documented hook does not exist"


def test_first_party_packages_use_only_the_public_api() -> None:
    """Code under plugins/ imports `nodehost` (public names) and `nodehost.testing` only."""
    offences = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] == "nodehost":
                if node.module == "nodehost":
                    wrong = [a.name for a in node.names if a.name not in nodehost.__all__]
                    if wrong:
                        offences.append(f"{path.relative_to(ROOT)}: nodehost.{wrong}")
                elif node.module != "nodehost.testing":
                    offences.append(f"{path.relative_to(ROOT)}: {node.module}")
            elif isinstance(node, ast.Import):
                offences += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                             if a.name.startswith("nodehost.") and a.name != "nodehost.testing"]
    assert offences == []


def test_the_test_kit_is_a_pytest_plugin_declared_by_nodehost() -> None:
    """pyproject declares the pytest11 entry point, and the installed metadata has it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {
        "nodehost.testing": "nodehost.testing"}
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")
                 if ep.dist is not None and ep.dist.name == "nodehost"}
    assert installed == {"nodehost.testing": "nodehost.testing"}, (
        "the installed nodehost predates the pytest11 entry point: pip install -e .")


def test_loading_the_test_kit_does_not_load_the_host() -> None:
    """pytest loads nodehost.testing in every session: importing it must stay light."""
    code = ("import sys, nodehost.testing; "
            "print(sorted(m for m in sys.modules if m.startswith('nodehost.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(["nodehost.config", "nodehost.descriptors", "nodehost.errors",
                               "nodehost.hookspecs",
                               "nodehost.node_api",
                               "nodehost.reports", "nodehost.testing"])
