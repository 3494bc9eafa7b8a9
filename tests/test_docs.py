"""docs/writing-node-packages.md works as written: its code is a package and its tests.

Each ```python block starts with the file it belongs to (`# src/acme_weather/__init__.py`,
`(continued)` appends). The blocks are written out in order, the package's tests run in a
pytest of their own (both executors, both anyio backends), the pyproject's entry point is
loaded as an installed distribution would be, and the config snippet is valid config.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodehost.cli import main
from nodehost.configfile import load_config
from nodehost.plugins import PluginHost
from nodehost.testing import EXECUTORS
from plugin_fixtures import install

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "writing-node-packages.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
BACKENDS = 2  # the inner pytest runs every anyio test on asyncio and trio


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(DOCS.read_text()) if lang == language]


def files() -> dict[str, str]:
    """The python blocks as files, in the order the page gives them."""
    out: dict[str, str] = {}
    for code in blocks("python"):
        header, _, body = code.partition("\n")
        match = re.fullmatch(r"# (\S+\.py)( \(continued\))?", header)
        assert match, f"a python block must start with '# <file>.py', not {header!r}"
        path, continued = match.groups()
        assert bool(continued) == (path in out), f"{path}: '(continued)' only after the start"
        out[path] = out.get(path, "") + (body if continued else code)
    return out


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    """The page's files written into a fresh directory, with src/ on sys.path."""
    for path, text in files().items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    pytester.syspathinsert(pytester.path / "src")
    return pytester.path


def test_the_walk_through_tests_pass_in_both_executors(
    project: Path, pytester: pytest.Pytester
) -> None:
    """Every test on the page passes, once per executor and backend."""
    tests = sum(text.count("\nasync def test_") for path, text in files().items()
                if path.startswith("tests/"))
    assert tests == 6
    result = pytester.runpytest("-p", "nodehost.testing", "-W", "error", "tests")
    result.assert_outcomes(passed=tests * len(EXECUTORS) * BACKENDS)


def test_the_entry_point_declared_on_the_page_loads_the_package(project: Path) -> None:
    """The pyproject block, installed, is found by the host with all four node types."""
    (pyproject,) = [b for b in blocks("toml") if b.startswith("# pyproject.toml")]
    meta = tomllib.loads(pyproject)["project"]
    install(project / "src", meta["name"], meta["version"],
            meta["entry-points"]["nodehost.packages"])
    importlib.invalidate_caches()
    host = PluginHost()
    reports = {r.plugin: r for r in host.load_entry_points(allow=[meta["name"]])}
    report = reports["acme-weather==1.0.0:weather"]
    assert report.ok, report.error
    assert host.catalog.types("acme.weather", "1.0.0") == [
        "acme.weather.fahrenheit", "acme.weather.read", "acme.weather.survey",
        "acme.weather.watch"]
    config = project / "config.toml"
    config.write_text('[plugins]\nallow = ["acme-weather"]\n')
    result = CliRunner().invoke(main, ["packages", "--config", str(config)])
    (listing,) = [b for b in blocks("") if b.startswith("acme.weather 1.0.0")]
    for line in listing.splitlines():
        if line.strip() != "...":
            assert line in result.stdout.splitlines()


def test_the_hook_example_registers_the_package(project: Path) -> None:
    """The hook form of the entry point (acme_weather.plugin) gives the same package."""
    host = PluginHost()
    report = host.add(importlib.import_module("acme_weather.plugin"), name="weather-hook")
    assert report.packages == ("acme.weather==1.0.0",)


def test_the_config_snippet_is_valid_config(tmp_path: Path) -> None:
    """The [executors] example decodes as nodehost configuration."""
    (snippet,) = [b for b in blocks("toml") if b.startswith("# config.toml")]
    path = tmp_path / "config.toml"
    path.write_text(snippet)
    config = load_config(path)
    assert config.executors.kind_for("nodehost.std") == "inprocess"
    assert config.executors.kind_for("acme.weather") == "subprocess"
