"""nodehost.std.command: a real child process, its output streamed, its group killed."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import time
from typing import Any

import anyio
import msgspec
import pytest
from nodehost_std import command as command_module
from nodehost_std import package

from nodehost import NodeError
from std_support import Recorder, acall

SPEC = package.nodes["nodehost.std.command"]
PY = sys.executable


async def run(params: dict[str, Any], recorder: Recorder | None = None) -> dict[str, Any]:
    recorder = recorder or Recorder()
    try:
        return await acall(SPEC, params, recorder)
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
async def test_env_cwd_and_stdin_reach_the_program(tmp_path: Any) -> None:
    result = await run(
        {
            "argv": script("""
            import json, os, sys
            print(json.dumps({"greeting": os.environ.get("GREETING"), "cwd": os.getcwd(),
                              "stdin": sys.stdin.read()}))
        """),
            "env": {"GREETING": "hello"},
            "cwd": str(tmp_path),
            "stdin": "line 1\nline 2\n",
        }
    )
    seen = msgspec.json.decode(result["stdout"])
    assert seen["greeting"] == "hello"
    assert os.path.samefile(seen["cwd"], tmp_path)
    assert seen["stdin"] == "line 1\nline 2\n"


@pytest.mark.anyio
async def test_inherit_env_false_starts_from_an_empty_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODEHOST_TEST_INHERITED", "yes")
    argv = script(
        "import os; print(os.environ.get('NODEHOST_TEST_INHERITED'), os.environ.get('ONLY'))"
    )
    inherited = await run({"argv": argv, "env": {"ONLY": "me"}})
    clean = await run({"argv": argv, "env": {"ONLY": "me"}, "inheritEnv": False})
    assert inherited["stdout"] == "yes me\n"
    assert clean["stdout"] == "None me\n"


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
async def test_missing_executable_is_named() -> None:
    with pytest.raises(NodeError) as caught:
        await run({"argv": ["nodehost-no-such-program", "--help"]})
    assert caught.value.code == "E.STD.COMMAND.NOT_FOUND"
    assert "'nodehost-no-such-program'" in caught.value.message


@pytest.mark.anyio
async def test_missing_working_directory_is_named(tmp_path: Any) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(NodeError) as caught:
        await run({"argv": [PY, "-c", "pass"], "cwd": missing})
    assert caught.value.code == "E.STD.COMMAND.CWD"
    assert missing in caught.value.message


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
    ],
)
def test_bad_parameters_are_rejected_naming_the_field(params: dict[str, Any], where: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(where)):
        SPEC.decode_params(params)


def test_parameters_use_camel_case_and_defaults() -> None:
    params = SPEC.decode_params({"argv": ["true"], "timeoutSeconds": 5, "inheritEnv": False})
    assert params.timeout_seconds == 5
    assert params.inherit_env is False
    assert params.check is True
    assert params.capture_bytes == 64 * 1024
