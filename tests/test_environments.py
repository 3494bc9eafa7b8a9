"""Package versions side by side: `nodehost packages install WHEEL`, one environment each.

acme-textstats 1.0.0 (counts words) and 2.0.0 (counts characters) share the import name
acme_textstats; one workflow pins a node to each and gets each version's own answer,
through `nodehost run` and through `nodehost serve`; the daemon's interpreter never
imports either (their import writes the importing interpreter to a marker file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from http_support import short_tmpdir
from nodehost.cli import main
from nodehost.environments import AlreadyInstalled, Environments, InstallFailed
from test_cli_client import Served, _serve
from wheels import make_wheel, textstats_wheel

TEXT = "to be or not"  # 4 words, 12 characters


def document() -> dict[str, Any]:
    def node(node_id: str, version: str) -> dict[str, Any]:
        return {"id": node_id, "type": "acme.textstats.count", "parameters": {"text": TEXT},
                "package": {"name": "acme.textstats", "version": version}}

    return {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "two versions"},
            "nodes": [node("old", "1.0.0"), node("new", "2.0.0")]}


def results(summary: dict[str, Any]) -> dict[str, Any]:
    return {n["nodeId"]: n.get("result") for n in summary["nodes"]}


EXPECTED = {"old": {"count": 4, "version": "1.0.0"}, "new": {"count": 12, "version": "2.0.0"}}


def cli(*args: str, config: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args, "--config", config], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def wheels(tmp_path: Path) -> tuple[Path, Path]:
    return textstats_wheel(tmp_path, "1.0.0"), textstats_wheel(tmp_path, "2.0.0")


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "imported-by"
    monkeypatch.setenv("ACME_TEXTSTATS_MARKER", str(path))
    return path


def imported_by(marker: Path) -> set[str]:
    return set(marker.read_text().split()) if marker.exists() else set()


def test_two_versions_installed_with_one_call_run_their_own_code(
        tmp_path: Path, wheels: tuple[Path, Path], marker: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path}/state"\n')
    code, out, err = cli("packages", "install", str(wheels[0]), str(wheels[1]),
                         config=str(config))
    assert code == 0, err
    assert "installed acme-textstats 1.0.0" in out and "installed acme-textstats 2.0.0" in out
    marker.unlink()  # installing described them (in their environments): count from here
    code, out, _ = cli("packages", "-o", "json", config=str(config))
    listing = {(p["name"], p["version"]): p for p in json.loads(out)["packages"]}
    for version in ("1.0.0", "2.0.0"):
        entry = listing[("acme.textstats", version)]
        assert entry["environment"] == f"{tmp_path}/state/packages/acme-textstats-{version}"
        assert entry["executor"] == "subprocess"
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(document()))
    code, out, err = cli("run", str(workflow), "-o", "json", config=str(config))
    assert code == 0, err
    assert results(json.loads(out)) == EXPECTED
    # only the environments' interpreters imported the package, never this one
    assert imported_by(marker) == {
        f"{tmp_path}/state/packages/acme-textstats-{v}/bin/python" for v in ("1.0.0", "2.0.0")}
    assert "acme_textstats" not in sys.modules


def test_installing_again_is_a_clear_no_op(tmp_path: Path, wheels: tuple[Path, Path]) -> None:
    environments = Environments(tmp_path / "packages")
    environments.install([str(wheels[0])])
    before = os.stat(tmp_path / "packages" / "acme-textstats-1.0.0" / "descriptor.json")
    again = environments.install([str(wheels[0])])
    assert isinstance(again[0], AlreadyInstalled)
    after = os.stat(tmp_path / "packages" / "acme-textstats-1.0.0" / "descriptor.json")
    assert after.st_mtime_ns == before.st_mtime_ns


def test_an_environment_holds_nodehost_s_runtime_but_none_of_the_daemon_s_packages(
        tmp_path: Path, wheels: tuple[Path, Path]) -> None:
    (env,) = Environments(tmp_path / "packages").install([str(wheels[1])])
    python = str(env.path / "bin" / "python")
    probe = ("import acme_textstats, nodehost.executors.worker; "
             "print(acme_textstats.package.version)")
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "2.0.0"
    missing = subprocess.run([python, "-c", "import anyio"], capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'anyio'" in missing.stderr


def test_a_broken_wheel_leaves_nothing_and_names_the_spec(tmp_path: Path) -> None:
    broken = make_wheel(tmp_path, "acme-broken", "1.0.0", {"acme_broken/__init__.py": ""},
                        {"nodes": "acme_broken.missing:package"})
    environments = Environments(tmp_path / "packages")
    with pytest.raises(InstallFailed) as info:
        environments.install([str(broken)])
    assert info.value.spec == str(broken)
    assert "acme_broken.missing" in info.value.message
    assert os.listdir(tmp_path / "packages") == []


def test_a_version_already_provided_elsewhere_is_refused_naming_both(
        tmp_path: Path, wheels: tuple[Path, Path]) -> None:
    environments = Environments(tmp_path / "packages")
    with pytest.raises(InstallFailed, match=r"acme\.textstats==1\.0\.0 is already provided by "
                                            r"acme-textstats==1\.0\.0:textstats"):
        environments.install([str(wheels[0])], taken={
            ("acme.textstats", "1.0.0"): "acme-textstats==1.0.0:textstats"})
    assert os.listdir(tmp_path / "packages") == []


def test_uninstall_removes_the_version(tmp_path: Path, wheels: tuple[Path, Path]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path}/state"\n')
    assert cli("packages", "install", str(wheels[0]), config=str(config))[0] == 0
    code, out, _ = cli("packages", "uninstall", "acme.textstats", "1.0.0", config=str(config))
    assert code == 0 and "uninstalled acme-textstats 1.0.0" in out
    assert os.listdir(tmp_path / "state" / "packages") == []
    code, _, err = cli("packages", "uninstall", "acme-textstats", "1.0.0", config=str(config))
    assert code == 2 and "is not installed" in err


def test_pip_builds_the_same_environment(tmp_path: Path, wheels: tuple[Path, Path]) -> None:
    (env,) = Environments(tmp_path / "packages").install([str(wheels[0])], installer="pip")
    assert isinstance(env, AlreadyInstalled) is False and env.installer == "pip"
    assert [p.version for p in env.packages] == ["1.0.0"]


@pytest.fixture
def served_with_both(wheels: tuple[Path, Path], marker: Path) -> Iterator[Served]:
    with short_tmpdir() as d:
        config = Path(d) / "install.toml"
        config.write_text(f'[server]\nstate_dir = "{d}/state"\n')
        assert cli("packages", "install", *map(str, wheels), config=str(config))[0] == 0
        marker.unlink()  # installing described them (in their environments): count from here
        yield from _serve(d)


def test_the_daemon_runs_each_version_without_importing_either(
        served_with_both: Served, marker: Path) -> None:
    served = served_with_both
    code, out, err = served.invoke("submit", "-w", "-o", "json",
                                   served.write("wf.json", document()))
    assert code == 0, err
    assert results(json.loads(out)) == EXPECTED
    state = f"{served.directory}/state/packages"
    assert imported_by(marker) == {f"{state}/acme-textstats-{v}/bin/python"
                                   for v in ("1.0.0", "2.0.0")}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the daemon serves with uvicorn
async def test_a_version_being_uninstalled_keeps_serving_the_runs_that_use_it(
        wheels: tuple[Path, Path], anyio_backend: str) -> None:
    """Uninstalled while a daemon runs: offered to no new run, kept for the run that uses
    it until that run ends, then removed (and its workers stopped)."""
    import anyio
    import httpx

    from nodehost.configfile import load_config
    from nodehost.environments import load_into
    from nodehost.plugins import Catalog
    from nodehost.service import Daemon

    with short_tmpdir() as d:
        config = Path(d) / "config.toml"
        config.write_text(f'[server]\nlisten = "unix:{d}/run/nodehost.sock"\n'
                          f'state_dir = "{d}/state"\nruntime_dir = "{d}/run"\n'
                          'drain_seconds = 0\n')
        assert cli("packages", "install", str(wheels[0]), config=str(config))[0] == 0
        environments = Environments(f"{d}/state/packages")
        (env,) = environments.installed()
        catalog = Catalog()
        assert load_into(catalog, environments.root) == []
        daemon = Daemon(load_config(config), catalog, config_path=str(config))
        daemon.open()
        release = Path(d) / "release"

        def submit(node_type: str, parameters: dict[str, Any]) -> dict[str, Any]:
            return {"workflow": {"id": "wf", "schemaVersion": "2025-01",
                                 "metadata": {"name": "t"}, "nodes": [{
                                     "id": "n", "type": node_type, "parameters": parameters,
                                     "package": {"name": "acme.textstats",
                                                 "version": "1.0.0"}}]}, "clientId": "c"}

        async with anyio.create_task_group() as tg:
            await tg.start(daemon.run)
            try:
                async with httpx.AsyncClient(
                        transport=httpx.AsyncHTTPTransport(uds=f"{d}/run/nodehost.sock"),
                        base_url="http://localhost/api/v1") as client:
                    held = await client.post("/runs", json=submit(
                        "acme.textstats.hold", {"release": str(release)}))
                    assert held.status_code == 202, held.text
                    run_id = held.json()["runId"]
                    told: list[int] = []  # the daemon runs here: its SIGHUP comes to us
                    previous = signal.signal(signal.SIGHUP, lambda n, f: told.append(n))
                    try:
                        code, out, err = cli("packages", "uninstall", "acme-textstats",
                                             "1.0.0", config=str(config))
                    finally:
                        signal.signal(signal.SIGHUP, previous)
                    assert code == 0, err
                    assert "the daemon removes it once no run uses it" in out
                    assert told == [signal.SIGHUP]
                    daemon.rescan_packages()  # what the daemon does on SIGHUP
                    assert env.path.is_dir()
                    refused = await client.post("/runs", json=submit(
                        "acme.textstats.count", {"text": "a b"}))
                    assert refused.status_code == 400, refused.text
                    [problem] = refused.json()["details"]
                    assert problem["path"] == "$.workflow.nodes[0].package.name"
                    assert "acme.textstats" in problem["message"]
                    code, _, err = cli("packages", "uninstall", "acme-textstats", "1.0.0",
                                       config=str(config))
                    assert code == 2 and "being uninstalled already" in err
                    release.touch()
                    assert daemon.host is not None
                    await daemon.host.scheduler.wait_run(run_id)
                    [node] = (await client.get(f"/runs/{run_id}")).json()["nodes"]
                    assert (node["status"], node["result"]) == ("succeeded",
                                                                {"version": "1.0.0"})
                    assert not env.path.exists()
                    assert environments.installed() == []
                    assert daemon.host.executors["subprocess"].statistics()["workers"] == 0
            finally:
                daemon.stop()
