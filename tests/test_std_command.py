"""nodehost.std.command: a real child process, its output streamed, its group killed.

The process tests call the node directly, with a Context whose work directory is the test's
`tmp_path` and whose [sandbox] allows the test's Python; what the node allows and refuses
is tested through a host (tests at the end), where it runs as it does in the daemon: in a
subprocess worker, since it is privileged.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nodehost_std import command as command_module
from nodehost_std import package

from nodehost import NodeError
from nodehost.config import PolicyConfig, Sandbox
from nodehost.errors import WorkflowInvalid
from std_support import Recorder, acall, run_std, std_host, std_workflow

SPEC = package.nodes["nodehost.std.command"]
PY = sys.executable
CONTEXT: dict[str, Any] = {}  # what make_ctx gets in this test: its work_dir and sandbox


@pytest.fixture(autouse=True)
def work_dir(tmp_path: Path) -> Any:
    CONTEXT.update(work_dir=tmp_path, sandbox=Sandbox(command_executables=[PY]))
    yield tmp_path
    CONTEXT.clear()


async def run(params: dict[str, Any], recorder: Recorder | None = None) -> dict[str, Any]:
    recorder = recorder or Recorder()
    try:
        return await acall(SPEC, params, recorder, **CONTEXT)
    finally:
        assert not recorder.data_chunks  # the command streams its output as text


def script(source: str) -> list[str]:
    return [PY, "-u", "-c", textwrap.dedent(source)]


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until_gone(pid: int, limit: float = 10.0) -> bool:
    """A process we are not the parent of dies asynchronously after SIGKILL: poll for it."""
    deadline = time.monotonic() + limit
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- results and streaming ----------------------------------------------------------------


@pytest.mark.anyio
async def test_output_is_streamed_line_by_line_on_its_channel_and_returned() -> None:
    recorder = Recorder()
    result = await run(
        {
            "argv": script("""
        import sys
        print("one")
        print("two")
        print("oops", file=sys.stderr)
        sys.stdout.write("no newline at the end")
    """)
        },
        recorder,
    )
    assert result["exitCode"] == 0
    assert result["stdout"] == "one\ntwo\nno newline at the end"
    assert result["stderr"] == "oops\n"
    assert result["durationSeconds"] >= 0
    assert recorder.channel("stdout") == ["one\n", "two\n", "no newline at the end"]
    assert recorder.channel("stderr") == ["oops\n"]


@pytest.mark.anyio
async def test_env_cwd_and_stdin_reach_the_program(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    argv = script("""
        import json, os, sys
        print(json.dumps({"greeting": os.environ.get("GREETING"), "cwd": os.getcwd(),
                          "stdin": sys.stdin.read()}))
    """)
    result = await run(
        {"argv": argv, "env": {"GREETING": "hello"}, "cwd": "sub", "stdin": "line 1\nline 2\n"}
    )
    seen = msgspec.json.decode(result["stdout"])
    assert seen["greeting"] == "hello"
    assert os.path.samefile(seen["cwd"], tmp_path / "sub")
    assert seen["stdin"] == "line 1\nline 2\n"
    # by default the program starts in the run's work directory
    seen = msgspec.json.decode((await run({"argv": argv}))["stdout"])
    assert os.path.samefile(seen["cwd"], tmp_path)


@pytest.mark.anyio
async def test_a_program_that_does_not_read_its_stdin_still_succeeds() -> None:
    result = await run({"argv": script("print('ignored stdin')"), "stdin": "x" * 1_000_000})
    assert result["exitCode"] == 0
    assert result["stdout"] == "ignored stdin\n"


@pytest.mark.anyio
async def test_only_the_last_capture_bytes_are_returned_but_everything_is_logged() -> None:
    recorder = Recorder()
    result = await run(
        {
            "argv": script("for i in range(1000): print(f'line {i:04}')"),
            "captureBytes": 20,
        },
        recorder,
    )
    assert result["stdout"] == "line 0998\nline 0999\n"
    assert len(recorder.channel("stdout")) == 1000
    assert recorder.channel("stdout")[0] == "line 0000\n"


# --- failures -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_non_zero_exit_fails_with_the_code_and_the_last_stderr_line() -> None:
    argv = script("import sys; print('disk full', file=sys.stderr); sys.exit(3)")
    with pytest.raises(NodeError) as caught:
        await run({"argv": argv})
    assert caught.value.code == "E.STD.COMMAND.EXIT"
    assert "exited with code 3" in caught.value.message
    assert "disk full" in caught.value.message
    assert PY in caught.value.message
    assert caught.value.details is not None and caught.value.details["exitCode"] == 3


@pytest.mark.anyio
async def test_check_false_returns_the_non_zero_exit_code() -> None:
    result = await run({"argv": script("raise SystemExit(3)"), "check": False})
    assert result["exitCode"] == 3


@pytest.mark.anyio
async def test_death_by_signal_is_named() -> None:
    argv = script("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    with pytest.raises(NodeError) as caught:
        await run({"argv": argv})
    assert caught.value.code == "E.STD.COMMAND.EXIT"
    assert "killed by SIGTERM" in caught.value.message
    assert (await run({"argv": argv, "check": False}))["exitCode"] == -signal.SIGTERM


@pytest.mark.anyio
async def test_a_listed_executable_that_is_missing_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nodehost-no-such-program")
    CONTEXT["sandbox"] = Sandbox(command_executables=[missing])
    with pytest.raises(NodeError) as caught:
        await run({"argv": [missing, "--help"]})
    assert caught.value.code == "E.STD.COMMAND.NOT_FOUND"
    assert repr(missing) in caught.value.message


@pytest.mark.anyio
async def test_missing_working_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(NodeError) as caught:
        await run({"argv": [PY, "-c", "pass"], "cwd": "nowhere"})
    assert caught.value.code == "E.STD.COMMAND.CWD"
    assert "'nowhere'" in caught.value.message


# --- timeout and cancellation kill the whole process group --------------------------------

SLEEPER = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(os.getpid(), child.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.anyio
async def test_timeout_kills_the_process_group_and_fails() -> None:
    recorder = Recorder()
    with pytest.raises(NodeError) as caught:
        await run({"argv": script(SLEEPER), "timeoutSeconds": 0.5}, recorder)
    assert caught.value.code == "E.STD.COMMAND.TIMEOUT"
    assert "0.5 s" in caught.value.message
    pid, grandchild = map(int, recorder.channel("stdout")[0].split())
    assert gone(pid)  # the node reaped it before failing
    assert wait_until_gone(grandchild)


@pytest.mark.anyio
async def test_cancellation_kills_the_process_group_and_propagates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(command_module, "KILL_GRACE_SECONDS", 0.2)
    # The program ignores SIGTERM, so stopping it needs the SIGKILL that follows.
    argv = script(
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + textwrap.dedent(SLEEPER)
    )
    first_line = anyio.Event()
    recorder = Recorder(on_chunk=lambda channel, text: first_line.set())
    outcome: list[str] = []

    async def node() -> None:
        try:
            await run({"argv": argv}, recorder)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    async with anyio.create_task_group() as tg:
        tg.start_soon(node)
        await first_line.wait()  # it runs, and its output arrived while it runs
        tg.cancel_scope.cancel()

    assert outcome == ["cancelled"]
    pid, grandchild = map(int, recorder.channel("stdout")[0].split())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert wait_until_gone(grandchild)


@pytest.mark.anyio
async def test_processes_left_holding_the_output_are_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(command_module, "LEFTOVER_GRACE_SECONDS", 0.2)
    recorder = Recorder()
    result = await run(
        {
            "argv": script("""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(child.pid)
    """)
        },
        recorder,
    )
    assert result["exitCode"] == 0
    assert wait_until_gone(int(result["stdout"]))


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"argv": []}, "$.argv"),
        ({"argv": "ls -l"}, "$.argv"),
        ({"argv": ["ls"], "timeoutSeconds": 0}, "$.timeoutSeconds"),
        ({"argv": ["ls"], "env": {"A": 1}}, "$.env"),
        ({"argv": ["ls"], "captureBytes": -1}, "$.captureBytes"),
        ({"argv": ["ls"], "shell": True}, "shell"),
        ({"argv": [""]}, "argv[0]"),
        ({"argv": ["ls"], "env": {"A=B": "c"}}, "'A=B'"),
        ({"argv": ["ls"], "inheritEnv": True}, "nothing is inherited from the daemon"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_field(params: dict[str, Any], where: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(where)):
        SPEC.decode_params(params)


def test_parameters_use_camel_case_and_defaults() -> None:
    params = SPEC.decode_params({"argv": ["true"], "timeoutSeconds": 5, "inheritEnv": False})
    assert params.timeout_seconds == 5
    assert params.inherit_env is False
    assert SPEC.decode_params({"argv": ["true"]}).inherit_env is False
    assert params.check is True
    assert params.capture_bytes == 64 * 1024


# --- only what the operator allowed (through a host: in a subprocess worker) --------------

ECHO = "/bin/echo"
PRINT_ENV = "import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))"
# LC_ALL keeps Python from setting LC_CTYPE itself (PEP 538): the environment stays exact
ALLOWED = Sandbox(command_executables=[PY], command_env={"LC_ALL": "C.UTF-8", "LANG": "C"})


async def run_command(parameters: dict[str, Any], sandbox: Sandbox = ALLOWED, *,
                      before: Sequence[dict[str, Any]] = ()) -> tuple[Any, Path]:
    """The task of one command node (after the `before` nodes) in a host with `sandbox`, and
    the run's work directory."""
    nodes = [*before, {"id": "cmd", "type": "nodehost.std.command", "parameters": parameters}]
    run, work_dir = await run_std(nodes, sandbox=sandbox,
                                  edges=[(node["id"], "cmd") for node in before])
    return run.tasks["cmd"], work_dir


def not_allowed(task: Any) -> str:
    assert task.status == "failed"
    assert task.error is not None and task.error.code == "E.STD.COMMAND.NOT_ALLOWED", task.error
    return str(task.error.message)


def test_the_command_node_type_is_privileged() -> None:
    assert SPEC.privileged


def test_a_workflow_may_not_use_it_unless_the_policy_names_it() -> None:
    host = std_host(ALLOWED, policy=PolicyConfig())
    node = {"id": "cmd", "type": "nodehost.std.command",
            "parameters": {"argv": [PY, "-c", "pass"]}}
    with pytest.raises(WorkflowInvalid, match=r"\[policy\] privileged"):
        host.submit(std_workflow([node]))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["sh", "-c", "cat /etc/shadow"], "argv[0] 'sh' is not an absolute path"),
        (["/bin/sh", "-c", "cat /etc/shadow"], "/bin/sh is not in [sandbox] command_executables"),
        ([ECHO, "hello"], f"{ECHO} is not in [sandbox] command_executables"),
        (["python3", "-c", "pass"], "argv[0] 'python3' is not an absolute path"),
        ([f"{os.path.dirname(PY)}/../bin/nodehost-not-python"], "is not in"),
    ],
)
async def test_a_program_not_listed_is_refused(argv: list[str], why: str) -> None:
    task, _ = await run_command({"argv": argv})
    message = not_allowed(task)
    assert why in message
    assert message.endswith(f"[sandbox] command_executables allows {PY}")


@pytest.mark.anyio
async def test_a_refusal_is_final_even_when_the_workflow_allows_retries() -> None:
    """A refused program is refused again on every attempt: the node fails at once."""
    run, _ = await run_std([{"id": "cmd", "type": "nodehost.std.command",
                             "parameters": {"argv": ["/bin/sh", "-c", "true"]},
                             "retry": {"maxAttempts": 3, "backoffSeconds": 0}}],
                           sandbox=Sandbox())
    task = run.tasks["cmd"]
    not_allowed(task)
    assert task.attempt == 1


@pytest.mark.anyio
async def test_with_nothing_listed_every_program_is_refused() -> None:
    task, _ = await run_command({"argv": [PY, "-c", "pass"]}, Sandbox())
    assert not_allowed(task).endswith("[sandbox] command_executables allows none")


@pytest.mark.anyio
async def test_inherit_env_is_refused() -> None:
    task, _ = await run_command({"argv": [PY, "-c", "pass"], "inheritEnv": True})
    assert task.status == "failed" and task.error is not None
    assert task.error.code == "E.NODE.PARAMETERS"
    assert "nothing is inherited from the daemon" in task.error.message
    assert "[sandbox] command_env" in task.error.message


@pytest.mark.anyio
async def test_the_program_gets_exactly_the_configured_env_and_the_workflows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODEHOST_TOKEN", "the-daemon-token")  # the daemon's, and its worker's
    task, work_dir = await run_command(
        {"argv": [PY, "-c", PRINT_ENV], "env": {"GREETING": "hello", "LANG": "C"}})
    assert task.status == "succeeded", task.error
    seen = msgspec.json.decode(task.result["stdout"])
    assert seen["env"] == {"LC_ALL": "C.UTF-8", "LANG": "C", "GREETING": "hello"}
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(work_dir)


@pytest.mark.anyio
async def test_called_directly_the_daemons_environment_does_not_leak_either(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODEHOST_TOKEN", "the-daemon-token")  # in this very process
    CONTEXT["sandbox"] = ALLOWED
    seen = msgspec.json.decode((await run({"argv": [PY, "-c", PRINT_ENV]}))["stdout"])
    assert seen["env"] == {"LC_ALL": "C.UTF-8", "LANG": "C"}


@pytest.mark.anyio
@pytest.mark.parametrize("env", [{"LANG": "de_DE.UTF-8"}, {"LD_PRELOAD": "/tmp/evil.so"},
                                 {"DYLD_INSERT_LIBRARIES": "/tmp/evil.dylib"}])
async def test_the_workflow_may_not_change_the_configured_env_nor_the_loader(
    env: dict[str, str],
) -> None:
    task, _ = await run_command({"argv": [PY, "-c", "pass"], "env": env})
    assert repr(next(iter(env))) in not_allowed(task)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "listed",
    [pytest.param(PY, id="as-given"), pytest.param(os.path.realpath(PY), id="resolved")],
)
async def test_a_program_is_the_same_by_its_path_or_its_resolved_path(listed: str) -> None:
    other = os.path.realpath(PY) if listed == PY else PY
    sandbox = Sandbox(command_executables=[listed], command_env={"LC_ALL": "C.UTF-8"})
    for argv0 in (listed, other):
        task, _ = await run_command({"argv": [argv0, "-c", "print('ran')"]}, sandbox)
        assert task.status == "succeeded", task.error
        assert task.result["stdout"] == "ran\n"


@pytest.mark.anyio
@pytest.mark.skipif(not os.access(ECHO, os.X_OK), reason=f"no {ECHO}")
async def test_a_listed_system_program_runs() -> None:
    task, _ = await run_command({"argv": [ECHO, "hello", "world"]},
                                Sandbox(command_executables=[ECHO]))
    assert task.status == "succeeded", task.error
    assert task.result["stdout"] == "hello world\n"


@pytest.mark.anyio
@pytest.mark.parametrize("cwd", ["..", "/", "sub/../..", "{outside}"])
async def test_a_working_directory_outside_the_work_directory_is_refused(
    cwd: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cwd = cwd.format(outside=tmp_path_factory.mktemp("outside"))
    task, _ = await run_command({"argv": [PY, "-c", "pass"], "cwd": cwd})
    assert f"working directory {cwd!r} is outside the run's work directory" in not_allowed(task)


@pytest.mark.anyio
async def test_a_working_directory_inside_the_work_directory_is_used() -> None:
    made = {"id": "make", "type": "nodehost.std.file.write",
            "parameters": {"path": "data/input.txt", "content": "from the run",
                           "makeDirs": True}}
    read = "import os; print(os.getcwd()); print(open('input.txt').read())"
    task, work_dir = await run_command({"argv": [PY, "-c", read], "cwd": "data"},
                                       before=[made])
    assert task.status == "succeeded", task.error
    cwd, content = task.result["stdout"].splitlines()
    assert os.path.realpath(cwd) == os.path.realpath(work_dir / "data")
    assert content == "from the run"
