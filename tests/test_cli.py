"""`nodehost run` and `nodehost validate` as a user runs them, on the shipped examples."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodehost.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def nodes_by_id(summary: dict) -> dict[str, dict]:
    return {n["taskId"]: n for n in summary["nodes"]}


def write(tmp_path: Path, name: str, document: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return str(path)


def test_validate_accepts_every_example() -> None:
    """Every shipped example is a valid workflow."""
    for example in sorted(EXAMPLES.glob("*.json")):
        code, out, err = invoke("validate", str(example))
        assert code == 0, err
        assert out.startswith("valid: ")


def test_validate_names_every_problem_by_path(tmp_path: Path) -> None:
    """An invalid document exits 2 and lists each problem with its JSON path."""
    doc = json.loads((EXAMPLES / "data-along-edges.json").read_text())
    nodes = doc["workflow"]["nodes"]
    nodes[1]["id"] = nodes[0]["id"]
    nodes[3]["package"]["version"] = "9.9.9"
    code, _out, err = invoke("validate", write(tmp_path, "bad.json", doc))
    assert code == 2
    assert "$.workflow.nodes[1].id: duplicate node id 'sensor'" in err
    assert "$.workflow.nodes[3].package.version" in err and "'1.0.0'" in err


def test_validate_json_output_for_scripts(tmp_path: Path) -> None:
    """`-o json` prints {valid, issues[{path, message}]} on stdout."""
    code, out, _ = invoke("validate", "-o", "json", write(tmp_path, "bad.json", "{not json"))
    assert code == 2
    report = json.loads(out)
    assert report["valid"] is False
    assert report["issues"][0]["path"] == "$"
    assert "not valid JSON" in report["issues"][0]["message"]
    code, out, _ = invoke("validate", "-o", "json", str(EXAMPLES / "container.json"))
    assert code == 0
    assert len(json.loads(out)["definitionHash"]) == 64


def test_run_passes_data_along_edges() -> None:
    """The data example delivers a transformed value into a command's argv."""
    code, out, err = invoke("run", "-o", "json", str(EXAMPLES / "data-along-edges.json"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "succeeded"
    nodes = nodes_by_id(summary)
    assert nodes["report"]["result"]["value"] == ["latest reading from", "boiler-2"]
    assert nodes["keep"]["result"]["value"] == 64.0


def test_run_container_example_returns_subgraph_results() -> None:
    """The container's results are its subgraph's, and flow on to the next node."""
    code, out, err = invoke("run", "-o", "json", str(EXAMPLES / "container.json"))
    assert code == 0, err
    nodes = nodes_by_id(json.loads(out))
    assert nodes["process"]["result"]["shape"] == {"data": "ok"}
    inner = [n for n in nodes if n.endswith("::shape")]
    assert len(inner) == 1 and nodes[inner[0]]["status"] == "succeeded"
    assert nodes["announce"]["result"]["value"] == ["processed", "ok"]


def test_run_failing_branch_exits_1_and_skips_downstream() -> None:
    """A failed branch fails the run (exit 1); the independent branch still finishes."""
    code, out, _ = invoke("run", "-o", "json", str(EXAMPLES / "failing-branch.json"))
    assert code == 1
    summary = json.loads(out)
    nodes = nodes_by_id(summary)
    assert summary["status"] == "failed"
    assert nodes["flaky"]["error"]["code"] == "E.DEMO.CAMERA"
    assert nodes["flaky"]["metadata"]["attempt"] == 2
    assert nodes["upload"]["status"] == "skipped"
    assert nodes["recovers"]["status"] == "succeeded"
    assert nodes["independent"]["status"] == "succeeded"


def test_run_human_output_shows_progress_logs_and_summary() -> None:
    """Without a terminal, each change is a plain line; failures are tabled at the end."""
    code, out, _ = invoke("run", str(EXAMPLES / "failing-branch.json"))
    assert code == 1
    assert "independent succeeded" in out
    assert "upload skipped: upstream 'flaky' failed" in out
    assert "E.DEMO.CAMERA: camera did not answer" in out
    assert out.rstrip().splitlines()[-1].startswith("run ")


def test_fail_fast_cancels_the_rest(tmp_path: Path) -> None:
    """--fail-fast ends the run at the first failure; the other branch is cancelled."""
    doc = {"id": "ff", "schemaVersion": "2025-01", "metadata": {"name": "ff"}, "nodes": [
        {"id": "bad", "type": "nodehost.std.fail",
         "package": {"name": "nodehost.std", "version": "1.0.0"}},
        {"id": "slow", "type": "nodehost.std.delay",
         "package": {"name": "nodehost.std", "version": "1.0.0"},
         "parameters": {"seconds": 3600}},
    ]}
    code, out, _ = invoke("run", "-o", "json", "--fail-fast", write(tmp_path, "ff.json", doc))
    assert code == 1
    nodes = nodes_by_id(json.loads(out))
    assert nodes["slow"]["status"] == "cancelled"


def test_bad_config_key_is_named(tmp_path: Path) -> None:
    """A typo in the config exits 2 and names the key."""
    config = write(tmp_path, "c.toml", "[scheduler]\nparalelism = 4\n")
    code, _, err = invoke("run", "--config", config, str(EXAMPLES / "container.json"))
    assert code == 2
    assert "paralelism" in err and "$.scheduler" in err


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A workflow file that does not exist exits 2 with the reason."""
    code, _, err = invoke("run", str(tmp_path / "nope.json"))
    assert code == 2
    assert "cannot read" in err and "No such file" in err


def test_shipped_config_is_the_default() -> None:
    """config.toml at the repository root decodes to exactly the built-in defaults."""
    from nodehost.config import Config
    from nodehost.configfile import load_config

    assert load_config(ROOT / "config.toml") == Config()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_cancels_the_run_and_reports_it(tmp_path: Path) -> None:
    """SIGINT cancels the run: exit 130, and the summary says which nodes were cancelled."""
    doc = {"id": "long", "schemaVersion": "2025-01", "metadata": {"name": "long"}, "nodes": [
        {"id": "wait", "type": "nodehost.std.command",
         "package": {"name": "nodehost.std", "version": "1.0.0"},
         "parameters": {"argv": [sys.executable, "-c",
                                 "import time; print('started', flush=True); time.sleep(600)"]}},
        {"id": "after", "type": "nodehost.std.delay",
         "package": {"name": "nodehost.std", "version": "1.0.0"}, "parameters": {"seconds": 0}},
    ], "edges": [{"source": {"node": "wait"}, "target": {"node": "after"}}]}
    path = write(tmp_path, "long.json", doc)
    config = tmp_path / "config.toml"  # the operator lets this one program run
    config.write_text(f'[policy]\nprivileged = ["nodehost.std.command"]\n'
                      f'[sandbox]\ncommand_executables = ["{sys.executable}"]\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodehost", "run", path, "-o", "json", "--progress", "plain",
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # progress goes to stderr with -o json
            if "wait stdout | started" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    summary = json.loads(out)
    assert summary["status"] == "cancelled"
    nodes = nodes_by_id(summary)
    assert nodes["wait"]["status"] == nodes["after"]["status"] == "cancelled"
    assert "SIGINT" in nodes["wait"]["state"]["message"]
