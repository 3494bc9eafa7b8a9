"""plugins/nodehost-template works once copied: its own tests pass, its entry point loads.

The template is not installed: a copy of it is tested in a temporary directory, with its
src/ on sys.path, the way an author who copied it would run it.
"""

from __future__ import annotations

import importlib
import shutil
import tomllib
from pathlib import Path

import pytest

from nodehost.plugins import PluginHost
from plugin_fixtures import install

pytest_plugins = ["pytester"]

TEMPLATE = Path(__file__).resolve().parent.parent / "plugins" / "nodehost-template"


@pytest.fixture
def copy(pytester: pytest.Pytester) -> Path:
    """A copy of the template, as an author would start, with src/ on sys.path."""
    target = pytester.path / "my-package"
    shutil.copytree(TEMPLATE, target, ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", ".pytest_cache"))
    pytester.syspathinsert(target / "src")
    return target


def test_the_template_tests_pass_in_both_executors(copy: Path, pytester: pytest.Pytester) -> None:
    """Its three tests pass, each in-process and in a subprocess, on both anyio backends."""
    result = pytester.runpytest("--rootdir", str(copy), "-c", str(copy / "pyproject.toml"),
                                str(copy / "tests"), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3 * 2 * 2)


def test_the_template_entry_point_loads_its_package(copy: Path) -> None:
    """Installed (a dist-info from its pyproject), the host finds acme.template 0.1.0."""
    project = tomllib.loads((copy / "pyproject.toml").read_text())["project"]
    install(copy / "src", project["name"], project["version"],
            project["entry-points"]["nodehost.packages"])
    importlib.invalidate_caches()
    host = PluginHost()
    reports = {r.plugin: r for r in host.load_entry_points(allow=["nodehost-template"])}
    assert reports["nodehost-template==0.1.0:template"].packages == ("acme.template==0.1.0",)
    spec = host.catalog.get("acme.template", "0.1.0", "acme.template.greet")
    assert spec is not None and spec.description == "Greet someone a number of times."
    params = spec.parameters_schema["$defs"]["GreetParams"]
    assert params["required"] == ["name"]
    assert params["properties"]["times"] == {
        "description": "How many greetings.", "type": "integer", "minimum": 1, "maximum": 10,
        "default": 1}
