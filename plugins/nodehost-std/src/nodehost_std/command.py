"""`nodehost.std.command`: run a program (no shell) and stream its output line by line.

A program is something the operator allowed, never something the workflow found: argv[0]
must be the absolute path of a program in `[sandbox] command_executables`; its environment
is `[sandbox] command_env` plus the workflow's `env`, nothing inherited from the daemon (its
tokens, its systemd sockets); it starts in the run's work directory. The node type is
privileged: a workflow may use it only where `[policy] privileged` names it, and it always
runs in a subprocess worker, never in the daemon's own process.
"""

from __future__ import annotations

import codecs
import math
import os
import shlex
import signal
import subprocess
import time
from typing import Annotated

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from msgspec import Meta, field

from nodehost import Context, NodeError

from . import package
from .structs import KiB, MiB, Params, Result

__all__ = ["CommandParams", "CommandResult", "command"]

EXECUTABLES = "[sandbox] command_executables"
ENV = "[sandbox] command_env"
# Variables that make the dynamic loader run other code in any allowed program (a library
# written to the work directory by file.write, say): only the operator may set them.
LOADER_PREFIXES = ("LD_", "DYLD_")

KILL_GRACE_SECONDS = 2.0  # SIGTERM, then SIGKILL this long after, when stopping the group
LEFTOVER_GRACE_SECONDS = 1.0  # how long processes left behind may keep the output pipes open
MAX_CHUNK_CHARS = 64 * KiB  # a longer line is logged in pieces of this size


Cwd = Annotated[
    str,
    Meta(
        min_length=1,
        description="Working directory: relative to the run's work directory (the default), "
        "and inside it.",
    ),
]


class CommandParams(Params, kw_only=True):
    """Run a program directly (no shell) with the given arguments."""

    argv: Annotated[
        list[str],
        Meta(
            min_length=1,
            description=(
                f"Program and arguments; argv[0] is the absolute path of a program in "
                f"{EXECUTABLES} (there is no PATH lookup)."
            ),
        ),
    ]
    env: Annotated[
        dict[str, str],
        Meta(
            description=(
                f"Variables added to {ENV}; they may not change a variable it sets, nor set "
                "LD_* or DYLD_* (loader) variables."
            )
        ),
    ] = field(default_factory=dict)
    inherit_env: Annotated[
        bool, Meta(description="Must be false: nothing is inherited from the daemon.")
    ] = False
    cwd: Cwd | None = None
    stdin: Annotated[str, Meta(description="Text written to the program's stdin.")] | None = None
    timeout_seconds: Annotated[float, Meta(gt=0, le=7 * 86_400)] | None = None
    check: Annotated[bool, Meta(description="Fail when the program exits non-zero.")] = True
    capture_bytes: Annotated[
        int, Meta(ge=0, le=16 * MiB, description="Keep the last N bytes of stdout and stderr.")
    ] = 64 * KiB

    def __post_init__(self) -> None:
        if not self.argv[0]:
            raise ValueError("argv[0] (the program) must not be empty")
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"env: {name!r} is not a valid variable name")
        if self.inherit_env:  # the daemon's environment holds its secrets (NODEHOST_TOKEN...)
            raise ValueError(
                f"inheritEnv: true is not supported: a program's environment is exactly {ENV} "
                "plus env, nothing is inherited from the daemon"
            )


class CommandResult(Result, kw_only=True):
    exit_code: Annotated[int, Meta(description="Exit status; -N when killed by signal N.")]
    stdout: Annotated[str, Meta(description="The last captureBytes bytes of stdout.")]
    stderr: Annotated[str, Meta(description="The last captureBytes bytes of stderr.")]
    duration_seconds: float


@package.node("nodehost.std.command", privileged=True)
async def command(ctx: Context, params: CommandParams) -> CommandResult:
    """Run an allowed program (no shell), streaming its stdout and stderr line by line."""
    shown = _show(params.argv)
    argv = [_program(ctx, params.argv[0], shown), *params.argv[1:]]
    env = _environment(ctx, params.env, shown)
    cwd = _working_dir(ctx, params.cwd, shown)
    started = time.monotonic()
    process = await _start(argv, cwd, env, params.stdin is not None)
    outputs = [
        _Output(ctx, "stdout", params.capture_bytes),
        _Output(ctx, "stderr", params.capture_bytes),
    ]
    timed_out = False
    try:
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None and process.stderr is not None
            tg.start_soon(outputs[0].pump, process.stdout)
            tg.start_soon(outputs[1].pump, process.stderr)
            if params.stdin is not None:
                assert process.stdin is not None
                tg.start_soon(_feed, process.stdin, params.stdin)
            with anyio.move_on_after(params.timeout_seconds or math.inf) as deadline:
                await process.wait()
            if deadline.cancelled_caught:
                timed_out = True
                await _stop_group(process)
            if not await _outputs_closed(outputs):
                # Processes the command left behind still hold its output pipes.
                _signal_group(process.pid, signal.SIGKILL)
                if not await _outputs_closed(outputs):
                    tg.cancel_scope.cancel()  # they escaped the group; stop reading
    except BaseException:
        await _stop_group(process)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()

    duration = time.monotonic() - started
    code = process.returncode
    assert code is not None
    stdout, stderr = (output.text() for output in outputs)
    details = {
        "argv": params.argv,
        "exitCode": code,
        "stdout": stdout[-4 * KiB :],
        "stderr": stderr[-4 * KiB :],
    }
    if timed_out:
        raise NodeError(
            "E.STD.COMMAND.TIMEOUT",
            f"{shown} did not finish within {params.timeout_seconds:g} s; "
            f"its process group was killed",
            remediation="Raise timeoutSeconds, or find out why the program hangs.",
            details=details,
        )
    if params.check and code != 0:
        last = _last_line(stderr) or _last_line(stdout)
        raise NodeError(
            "E.STD.COMMAND.EXIT",
            f"{shown} {_describe_exit(code)}" + (f": {last}" if last else ""),
            remediation="See the command's stderr; set check to false to accept any exit code.",
            details=details,
        )
    return CommandResult(
        exit_code=code, stdout=stdout, stderr=stderr, duration_seconds=round(duration, 6)
    )


def _program(ctx: Context, argv0: str, shown: str) -> str:
    """The entry of [sandbox] command_executables that argv[0] names: the same path, or one
    that resolves to the same file (`/usr/bin/python3` for `/usr/bin/python3.11`).

    The entry is what runs, not argv[0]: the operator's paths and their links are theirs,
    while a link the workflow made could be pointed elsewhere after this check. It is also
    what the program sees as its argv[0], so that `/bin/sh` (a link to busybox, say) still
    behaves as the operator's entry says."""
    allowed = ctx.sandbox.command_executables
    if not os.path.isabs(argv0):
        why = f"argv[0] {argv0!r} is not an absolute path (programs are not looked up on PATH)"
    else:
        if argv0 in allowed:
            return argv0
        real = os.path.realpath(argv0)
        for entry in allowed:
            if os.path.realpath(entry) == real:
                return entry
        why = f"{argv0} is not in {EXECUTABLES}"
    listed = ", ".join(allowed) if allowed else "none"
    raise _not_allowed(
        shown,
        f"{why}; {EXECUTABLES} allows {listed}",
        f"Give argv[0] as the absolute path of a program in {EXECUTABLES}, or ask the "
        "operator to add the program there.",
    )


def _environment(ctx: Context, env: dict[str, str], shown: str) -> dict[str, str]:
    """[sandbox] command_env plus the workflow's variables. The workflow adds, it does not
    override: the operator's values (PATH, say) are what they vetted the programs with."""
    configured = ctx.sandbox.command_env
    fix = f"Leave out of env the variables {ENV} sets, and loader variables."
    for name, value in env.items():
        if name in configured and configured[name] != value:
            why = f"env {name!r} is set by {ENV}, which a workflow may add to but not change"
            raise _not_allowed(shown, why, fix)
        if name.startswith(LOADER_PREFIXES):
            why = f"env {name!r} is a dynamic loader variable, which only {ENV} may set"
            raise _not_allowed(shown, why, fix)
    return configured | env


def _working_dir(ctx: Context, cwd: str | None, shown: str) -> str:
    """The real path of `cwd` (relative to the run's work directory), inside that directory.

    Checked on resolved paths rather than walked as the file nodes walk theirs: the program
    is free to change directory once it runs, so this keeps a workflow's programs where it
    expects them, and is not what confines them."""
    fix = "Give cwd relative to the run's work directory, and inside it."
    if ctx.work_dir is None:
        why = "this host gives the run no work directory to start the program in"
        raise _not_allowed(shown, why, fix)
    work = os.path.realpath(ctx.work_dir)
    real = os.path.realpath(os.path.join(work, cwd or "."))  # an absolute cwd stays itself
    if os.path.commonpath([work, real]) != work:
        why = f"working directory {cwd!r} is outside the run's work directory {ctx.work_dir}"
        raise _not_allowed(shown, why, fix)
    if not os.path.isdir(real):
        raise NodeError(
            "E.STD.COMMAND.CWD",
            f"cannot run {shown}: working directory {cwd!r} is not a directory",
            remediation="Set cwd to an existing directory inside the run's work directory.",
        )
    return real


def _not_allowed(shown: str, why: str, fix: str) -> NodeError:
    """Refuses what the operator did not allow (final: a retry would fail the same way)."""
    return NodeError(
        "E.STD.COMMAND.NOT_ALLOWED",
        f"cannot run {shown}: {why}",
        remediation=fix,
        retryable=False,
    )


async def _start(argv: list[str], cwd: str, env: dict[str, str], stdin: bool) -> Process:
    try:
        return await anyio.open_process(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, so that it can be killed whole
        )
    except FileNotFoundError:
        raise NodeError(
            "E.STD.COMMAND.NOT_FOUND",
            f"executable {argv[0]!r} not found",
            remediation=f"Install the program there, or correct {EXECUTABLES}.",
        ) from None
    except PermissionError:
        raise NodeError(
            "E.STD.COMMAND.PERMISSION",
            f"{argv[0]!r} cannot be executed: permission denied",
            remediation="Check that argv[0] names an executable file the host may run.",
        ) from None
    except OSError as exc:
        raise NodeError(
            "E.STD.COMMAND.START", f"cannot start {argv[0]!r}: {exc.strerror or exc}"
        ) from None


class _Output:
    """One output pipe: logged line by line on its channel, its tail kept for the result."""

    def __init__(self, ctx: Context, channel: str, capture: int) -> None:
        self.ctx = ctx
        self.channel = channel
        self.capture = capture
        self.tail = bytearray()
        self.truncated = False
        self.closed = anyio.Event()

    async def pump(self, stream: ByteReceiveStream) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            async for data in stream:
                self._keep(data)
                *lines, pending = (pending + decoder.decode(data)).split("\n")
                for line in lines:
                    self._log(line + "\n")
                while len(pending) >= MAX_CHUNK_CHARS:
                    self._log(pending[:MAX_CHUNK_CHARS])
                    pending = pending[MAX_CHUNK_CHARS:]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        pending += decoder.decode(b"", final=True)
        if pending:
            self._log(pending)
        self.closed.set()

    def _log(self, text: str) -> None:
        self.ctx.log(text, channel=self.channel)

    def _keep(self, data: bytes) -> None:
        self.tail += data
        if len(self.tail) > self.capture:
            del self.tail[: len(self.tail) - self.capture]
            self.truncated = True

    def text(self) -> str:
        data = bytes(self.tail)
        if self.truncated:  # do not start in the middle of a UTF-8 sequence
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace")


async def _outputs_closed(outputs: list[_Output]) -> bool:
    """Wait a short while for every output pipe to reach its end; say whether they did."""
    with anyio.move_on_after(LEFTOVER_GRACE_SECONDS):
        for output in outputs:
            await output.closed.wait()
    return all(output.closed.is_set() for output in outputs)


async def _feed(stream: ByteSendStream, text: str) -> None:
    try:
        async with stream:
            await stream.send(text.encode())
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the program exited or closed its stdin without reading everything


async def _stop_group(process: Process) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period; wait for the program."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            with anyio.move_on_after(KILL_GRACE_SECONDS):
                await process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # and whatever it left behind
        await process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _show(argv: list[str]) -> str:
    shown = shlex.join(argv)
    return f"`{shown if len(shown) <= 200 else shown[:197] + '...'}`"
