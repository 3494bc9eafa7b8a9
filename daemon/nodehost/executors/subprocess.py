"""The subprocess executor: each attempt runs in a worker process of its own node type.

Workers are started on demand and kept warm (a few idle ones per node type and package
version), so an attempt usually starts without paying for the import. A worker runs one
attempt at a time, which is what makes containment exact: when a node crashes, hangs or
blows its memory limit, only that node fails (with the exit code or signal), and cancelling
it kills its worker's whole process group.

Nothing a node does can reach the daemon's state: a worker is confined by Landlock before it
imports the package (`confinement`), to what its tenant may reach. Landlock cannot be undone,
so a worker serves one tenant for its whole life: the tenant is part of the pool's key. Its
environment holds nothing of the daemon's (no token, no credentials, no NODEHOST_* setting).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from msgspec import json

from ..config import ExecutorsConfig, Sandbox
from ..errors import Code
from ..model import ErrorInfo
from ..reports import Chunk
from . import AttemptFailed, landlock
from .confinement import ENV as CONFINEMENT_ENV
from .confinement import Confinement, for_tenant
from .frames import MAX_FRAME, Done, Failed, Hello, Start, ToHost, decode_to_host, encode, header

if TYPE_CHECKING:
    from ..engine import Attempt
    from ..node_api import NodeSpec, Reporter
    from ..workdirs import WorkDirs

__all__ = ["SubprocessExecutor"]

# what systemd hands the daemon is not for node processes (they must never ping or notify,
# nor learn where the credentials and the state are); NODEHOST_* (the token, the config...)
# is the daemon's own
_SCRUB = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                    "LISTEN_FDNAMES", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY",
                    "RUNTIME_DIRECTORY"})
_Key = tuple[str, str, str, str, str, str]  # module, qualname, package, version, type, tenant


class _WorkerGone(Exception):
    """The worker's protocol pipe closed: it exited or was killed."""


class _Worker:
    def __init__(self, process: Process, key: _Key, temp: str | None) -> None:
        self.process = process
        self.key = key
        self.temp = temp  # its own TMPDIR (confined workers), removed when it ends
        assert process.stdout is not None and process.stderr is not None
        self.frames = BufferedByteReceiveStream(process.stdout)
        self.stderr = process.stderr
        self.pid = process.pid

    async def send(self, message: Start) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(encode(message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise _WorkerGone from exc

    async def receive(self) -> ToHost:
        try:
            (size,) = header.unpack(await self.frames.receive_exactly(header.size))
            if size > MAX_FRAME:
                raise _WorkerGone(f"frame of {size} bytes")
            return decode_to_host(await self.frames.receive_exactly(size))
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise _WorkerGone from exc


class SubprocessExecutor:
    """Runs attempts in worker processes as the `[executors]` section says: `idle_workers`
    warm ones kept per node type and tenant, `memory_limit_mb` each, `kill_grace_seconds`
    between SIGTERM and SIGKILL when one is stopped; confined as `[sandbox] landlock` says,
    never reaching the `protect` paths (the daemon's state, config, tokens...) nor the work
    root but for the tenant's own directory."""

    def __init__(
        self,
        config: ExecutorsConfig = ExecutorsConfig(),
        *,
        python: str = sys.executable,
        sandbox: Sandbox | None = None,
        work_dirs: WorkDirs | None = None,
        protect: Sequence[Path | str] = (),
    ) -> None:
        self.sandbox = sandbox or Sandbox()
        self.work_dirs = work_dirs
        self.protect = [os.fspath(p) for p in protect]
        # the ABI workers are confined with (0: not confined)
        self.landlock = 0 if self.sandbox.landlock == "off" else landlock.abi()
        self.idle = config.idle_workers
        self.memory_limit_mb = config.memory_limit_mb
        self.kill_grace = config.kill_grace_seconds
        self.python = python
        self._idle: defaultdict[_Key, list[_Worker]] = defaultdict(list)
        self._pids: set[int] = set()
        self._temp_root: str | None = None  # holds the workers' TMPDIRs (made when needed)
        self.started = 0

    @property
    def confinement(self) -> Literal["landlock", "off", "unavailable"]:
        """How workers are confined: by Landlock, not (`landlock = "off"`), or not because
        the kernel has no Landlock (then "require" refuses to start workers)."""
        if self.landlock:
            return "landlock"
        return "off" if self.sandbox.landlock == "off" else "unavailable"

    @property
    def pids(self) -> frozenset[int]:
        """The worker processes started and not reaped yet."""
        return frozenset(self._pids)

    async def execute(
        self, attempt: Attempt, reporter: Reporter, is_cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        spec = attempt.spec
        # the worker makes it when the node first asks for it (in its tenant's directory,
        # which exists before the worker starts: the worker is confined to it)
        work_dirs = self.work_dirs
        work_dir = "" if work_dirs is None else str(work_dirs.path(attempt.tenant,
                                                                   attempt.run_id))
        key = _key(spec, attempt.tenant)
        pool = self._idle[key]
        worker = pool.pop() if pool else await self._spawn(key, spec)
        outcome: Done | Failed | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward_stderr, worker, reporter)
                try:
                    await worker.send(Start(
                        dispatch_id=attempt.dispatch_id, run_id=attempt.run_id,
                        node_id=attempt.node_id, task_id=attempt.task_id,
                        attempt=attempt.attempt, parameters=attempt.parameters,
                        tenant=attempt.tenant, work_dir=work_dir, sandbox=self.sandbox,
                    ))
                    outcome = await self._follow(worker, reporter)
                except _WorkerGone:
                    pass  # outcome stays None
                tg.cancel_scope.cancel()
        finally:
            if outcome is not None and len(pool) < self.idle:
                pool.append(worker)
            else:  # surplus, crashed, or cancelled mid-attempt: end its process group
                with anyio.CancelScope(shield=True):
                    await self._kill(worker)
        if outcome is None:
            raise await self._crashed(worker, spec)
        if isinstance(outcome, Failed):
            error = ErrorInfo(code=outcome.code, message=outcome.message,
                              details=outcome.details)
            raise AttemptFailed(error, retryable=outcome.retryable)
        return outcome.result

    async def aclose(self) -> None:
        """Stop the idle workers."""
        pools, self._idle = self._idle, defaultdict(list)
        with anyio.CancelScope(shield=True):
            for workers in pools.values():
                for worker in workers:
                    await self._kill(worker)
        if not self._pids:
            _remove(self._temp_root)
            self._temp_root = None

    def statistics(self) -> dict[str, int]:
        return {"idle": sum(len(p) for p in self._idle.values()), "started": self.started}

    # --- inside an attempt -------------------------------------------------------------------

    async def _follow(self, worker: _Worker, reporter: Reporter) -> Done | Failed:
        while True:
            message = await worker.receive()
            if isinstance(message, Done | Failed):
                return message
            if not isinstance(message, Hello):
                reporter(message)  # a NodeReport, for the engine as it came

    async def _forward_stderr(self, worker: _Worker, reporter: Reporter) -> None:
        """What the node writes to stderr (or prints) becomes its "stderr" log channel."""
        pending = b""
        try:
            async for data in worker.stderr:
                pending += data
                if b"\n" in pending:
                    text, _, pending = pending.rpartition(b"\n")
                    reporter(Chunk("stderr", text.decode(errors="replace") + "\n"))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if pending:
            reporter(Chunk("stderr", pending.decode(errors="replace")))

    # --- worker lifecycle ----------------------------------------------------------------------

    async def _spawn(self, key: _Key, spec: NodeSpec) -> _Worker:
        module, qualname = key[0], key[1]
        if "<locals>" in qualname or module == "__main__":
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE,
                message=f"node type {spec.type!r} cannot run in a subprocess: its function "
                        f"{module}.{qualname} is not importable (define it at module level, "
                        f"or run package {spec.package!r} in-process)",
            ), retryable=False)
        if self.sandbox.landlock == "require" and not self.landlock:
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE,
                message="[sandbox] landlock = \"require\", but this kernel has no Landlock: "
                        "no worker is started unconfined",
            ), retryable=False)
        env = {k: v for k, v in os.environ.items()
               if k not in _SCRUB and not k.startswith("NODEHOST_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if self.memory_limit_mb:
            env["NODEHOST_WORKER_MEMORY_MB"] = str(self.memory_limit_mb)
        temp = self._make_temp(key[5]) if self.landlock else None
        try:
            if temp is not None:
                env["TMPDIR"] = temp
                env[CONFINEMENT_ENV] = json.encode(self._confinement(key[5], temp)).decode()
            with anyio.CancelScope(shield=True):  # a process started is a process we must end
                process = await anyio.open_process(
                    [self.python, "-m", "nodehost.executors.worker", *key],
                    env=env, start_new_session=True,
                )
        except BaseException:
            _remove(temp)
            raise
        self.started += 1
        self._pids.add(process.pid)
        worker = _Worker(process, key, temp)
        try:
            await anyio.lowlevel.checkpoint()  # cancelled while it started: end it below
            hello = await worker.receive()
        except _WorkerGone:
            with anyio.CancelScope(shield=True):
                stderr = await _read_all(worker)
                code = await process.wait()
            self._ended(worker)
            tail = stderr.decode(errors="replace").strip().splitlines()[-12:]
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE,
                message=f"the worker for {spec.package}=={spec.version} {spec.type!r} did not "
                        f"start ({_exit_text(code)}): {tail[-1] if tail else 'no output'}",
                details={"stderr": "\n".join(tail)},
            ), retryable=False) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(worker)
            raise
        if not isinstance(hello, Hello):  # pragma: no cover - protocol violation
            await self._kill(worker)
            raise AttemptFailed(ErrorInfo(code=Code.INTERNAL, message=f"worker said {hello!r} "
                                          "before hello"), retryable=True)
        return worker

    def _make_temp(self, tenant: str) -> str:
        """A confined worker's own TMPDIR: where tempfile works even when the temp directory
        itself had to be carved (a protected path in it), and what it leaves there goes with
        it. In a directory of ours that the worker may remove it from: so it can clean up
        after itself when the daemon is gone."""
        if self._temp_root is None or not os.path.isdir(self._temp_root):
            self._temp_root = tempfile.mkdtemp(prefix="nodehost-workers-")
        return tempfile.mkdtemp(prefix=f"{tenant}-", dir=self._temp_root)

    def _confinement(self, tenant: str, temp: str) -> Confinement:
        work = [temp, tempfile.gettempdir(), *self.sandbox.file_roots]
        protect = list(self.protect)
        work_dirs = self.work_dirs
        if work_dirs is not None:  # its tenant's directory, none of the others'
            tenant_dir = work_dirs.tenant_dir(tenant)
            tenant_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            work.insert(0, str(tenant_dir))
            protect.append(str(work_dirs.root))
        return for_tenant(tenant, work=work, protect=protect, temp=temp)

    def _ended(self, worker: _Worker) -> None:
        """The worker's process is reaped: forget its pid, remove its TMPDIR."""
        self._pids.discard(worker.pid)
        _remove(worker.temp)
        worker.temp = None

    async def _crashed(self, worker: _Worker, spec: NodeSpec) -> AttemptFailed:
        code = worker.process.returncode  # _kill has reaped it
        details: dict[str, Any] = {"exitCode": code}
        if code is not None and code < 0:
            details["signal"] = signal.Signals(-code).name
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        return AttemptFailed(ErrorInfo(
            code=Code.RUNNER_FAILURE,
            message=f"the worker process of {spec.package}=={spec.version} died during the "
                    f"attempt: {_exit_text(code)}{hint}",
            details=details,
        ), retryable=True)

    async def _kill(self, worker: _Worker) -> None:
        """End a worker and its process group: stdin closed, then SIGTERM, then SIGKILL."""
        process = worker.process
        if process.returncode is None:
            for sig, wait in ((signal.SIGTERM, self.kill_grace), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(worker.pid, sig)
                except ProcessLookupError:
                    break
                with anyio.move_on_after(wait):
                    await process.wait()
                    break
        else:  # the leader is gone; what it started may not be
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        await process.aclose()
        self._ended(worker)


def _key(spec: NodeSpec, tenant: str) -> _Key:
    fn = spec.fn
    return (fn.__module__, fn.__qualname__, spec.package, spec.version, spec.type, tenant)


def _remove(temp: str | None) -> None:
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)


async def _read_all(worker: _Worker) -> bytes:
    chunks = []
    try:
        async for data in worker.stderr:
            chunks.append(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    return b"".join(chunks)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"
