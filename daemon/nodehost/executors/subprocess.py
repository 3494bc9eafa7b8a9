"""The subprocess executor: attempts run in worker processes, a pool per package version.

A pool serves one package version for one tenant, with the interpreter of wherever the
package lives (the daemon's own, or the package's own environment, whose code the daemon
never imports). It grows while every worker is busy, up to what the scheduler lets run,
and keeps `idle_workers` warm; a surplus worker is stopped once idle for `idle_seconds`.
A worker runs up to `concurrency` attempts of async nodes at once on its one event loop, or
one attempt of a sync node; frames are batched on its pipes.

Containment: a crash or a memory blow-up fails the attempts of that worker only (with the
exit code or signal; one attempt, for sync nodes and CPU-bound packages set to concurrency
1), and a stopped attempt is cancelled inside its worker, or, if it does not end within
`kill_grace_seconds` (a sync node always), its worker's whole process group is killed.

Nothing a node does can reach the daemon's state: a worker is confined by Landlock before it
imports the package (`confinement`), to what its tenant may reach. Landlock cannot be undone,
so a worker serves one tenant for its whole life: the tenant is part of the pool's key. Its
environment holds nothing of the daemon's (no token, no credentials, no NODEHOST_* setting).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
from anyio.abc import Process
from msgspec import json

from ..config import ExecutorsConfig, Sandbox
from ..errors import Code
from ..model import ErrorInfo
from ..plugins import Location
from ..reports import Chunk
from . import AttemptFailed, landlock
from .confinement import ENV as CONFINEMENT_ENV
from .confinement import Confinement, for_tenant
from .frames import Cancel, Done, Failed, Hello, Load, Report, Start, decode_to_host, encode, split

if TYPE_CHECKING:
    from ..descriptors import NodeType
    from ..engine import Attempt
    from ..node_api import Reporter
    from ..plugins import Catalog
    from ..workdirs import WorkDirs

__all__ = ["SubprocessExecutor"]

log = logging.getLogger(__name__)

# what systemd hands the daemon is not for node processes (they must never ping or notify,
# nor learn where the credentials and the state are); NODEHOST_* (the token, the config...)
# is the daemon's own
_SCRUB = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                    "LISTEN_FDNAMES", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY",
                    "RUNTIME_DIRECTORY"})
# what would put the daemon's packages on an environment's path
_NOT_FOR_ENVIRONMENTS = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                                   "PYTHONUSERBASE", "VIRTUAL_ENV"})
_SEND_SECONDS = 60.0  # a worker that takes no frame for this long is stuck: it is killed
_Key = tuple[str, str, str]  # package, version, tenant


class _Call:
    """One attempt in flight in a worker."""

    __slots__ = ("done", "outcome", "reporter", "sync")

    def __init__(self, reporter: Reporter, sync: bool) -> None:
        self.reporter = reporter
        self.sync = sync
        self.done = anyio.Event()
        self.outcome: Done | Failed | None = None  # None once done: the worker died


class _Worker:
    def __init__(self, key: _Key, location: Location, capacity: int) -> None:
        self.key = key
        self.location = location
        self.capacity = capacity
        self.load = 0  # capacity taken by attempts (a sync one takes all of it)
        self.calls: dict[int, _Call] = {}
        self.ready = anyio.Event()  # set once it said hello, or failed to start
        self.failure: AttemptFailed | None = None
        self.alive = True
        self.idle_since = 0.0
        self.process: Process | None = None
        self.pid = 0
        self.temp: str | None = None  # its own TMPDIR (confined workers), removed at the end
        self.stderr_tail: deque[str] = deque(maxlen=12)
        self.stderr_done = anyio.Event()
        self.stopping: anyio.Event | None = None  # set once it is ended
        self._slot = 0
        self._outbox: list[bytes] = []
        self._sending = False
        self.wfd = -1  # our ends of its stdin and stdout (non-blocking)
        self.rfd = -1
        self.read_ended: asyncio.Future[None] | None = None

    def next_slot(self) -> int:
        self._slot += 1
        return self._slot

    async def send(self, data: bytes) -> None:
        """Write a frame, with whatever else is waiting (one write for many frames): at
        once while the pipe has room, else as it drains. A write is never cut off half-way
        (that would garble the pipe); a worker that takes nothing for a minute is stuck,
        and killed."""
        if not self._sending and self.alive and self.wfd >= 0:
            try:  # the pipe has room, mostly: no need for a cancel scope then
                data = data[os.write(self.wfd, data):]
            except BlockingIOError:
                pass
            except OSError:
                data = b""
                self._broken()
            if not data:
                return
        self._outbox.append(data)
        if self._sending:
            return  # the write in progress takes it along
        self._sending = True
        try:
            with anyio.CancelScope(shield=True):
                while self._outbox and self.alive and self.wfd >= 0:
                    chunk = memoryview(b"".join(self._outbox))
                    self._outbox.clear()
                    while chunk:
                        try:
                            chunk = chunk[os.write(self.wfd, chunk):]
                            continue
                        except BlockingIOError:
                            pass
                        with anyio.move_on_after(_SEND_SECONDS) as scope:
                            await anyio.wait_writable(self.wfd)
                        if scope.cancelled_caught:
                            raise BrokenPipeError("the worker takes no frames")
        except (OSError, anyio.ClosedResourceError):
            self._broken()
        finally:
            self._sending = False

    def _broken(self) -> None:
        """Its stdin is broken (or it takes nothing): it is killed, and fails what it has."""
        self.alive = False
        with _ignore_gone():
            os.killpg(self.pid, signal.SIGKILL)

    async def receive(self) -> bytes:
        """What the worker wrote since the last call (b"": its end is closed). Always a
        checkpoint: a worker that writes without pause must not keep the loop to itself."""
        while self.rfd >= 0:
            await anyio.wait_readable(self.rfd)
            if self.rfd < 0:
                break
            try:
                return os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                continue
        return b""

    def close_pipes(self) -> None:
        ended = self.read_ended
        if ended is not None and not ended.done():  # the reader callback's: it is removed
            ended.set_result(None)
        for name in ("wfd", "rfd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                anyio.notify_closing(fd)  # a task waiting on it gets ClosedResourceError
                os.close(fd)


class SubprocessExecutor:
    """Runs attempts in worker processes as the `[executors]` section says; confined as
    `[sandbox] landlock` says, never reaching the `protect` paths (the daemon's state,
    config, tokens...) nor the work root but for the tenant's own directory.

    Start `run` in a task group (the host does) before the first attempt."""

    def __init__(
        self,
        config: ExecutorsConfig = ExecutorsConfig(),
        *,
        catalog: Catalog | None = None,
        python: str = sys.executable,
        sandbox: Sandbox | None = None,
        work_dirs: WorkDirs | None = None,
        protect: Sequence[Path | str] = (),
    ) -> None:
        self.sandbox = sandbox or Sandbox()
        self.catalog = catalog
        self.work_dirs = work_dirs
        self.protect = [os.fspath(p) for p in protect]
        # the ABI workers are confined with (0: not confined)
        self.landlock = 0 if self.sandbox.landlock == "off" else landlock.abi()
        self.config = config
        self.python = python
        self._pools: defaultdict[_Key, list[_Worker]] = defaultdict(list)
        self._pids: set[int] = set()
        self._temp_root: str | None = None  # holds the workers' TMPDIRs (made when needed)
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle_changed = anyio.Event()
        self._importable: dict[tuple[str, str, str], str | None] = {}
        self.started = 0
        self._last_work_dir: tuple[tuple[str, str], str] = (("", ""), "")
        self._locations: dict[tuple[str, str, str], Location] = {}
        self._locations_generation = -1

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

    def statistics(self) -> dict[str, int]:
        workers = [w for pool in self._pools.values() for w in pool]
        return {"idle": sum(1 for w in workers if not w.load), "workers": len(workers),
                "started": self.started}

    # --- serving -----------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Hold the workers' tasks (their pipes) and stop surplus idle workers in time."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._retire_idle()
            finally:
                self._tg = None

    async def _retire_idle(self) -> None:
        while True:
            self._idle_changed = anyio.Event()
            due = self._retire_due()
            if due is None:
                await self._idle_changed.wait()
            else:
                with anyio.move_on_after(due):
                    await self._idle_changed.wait()

    def _retire_due(self) -> float | None:
        """Stop the surplus idle workers whose time is up; seconds until the next one's."""
        now = anyio.current_time()
        keep, linger = self.config.idle_workers, self.config.idle_seconds
        nearest: float | None = None
        for pool in self._pools.values():
            idle = sorted((w for w in pool if not w.load and w.ready.is_set() and w.alive),
                          key=lambda w: w.idle_since, reverse=True)  # the freshest first
            for worker in idle[keep:]:
                left = worker.idle_since + linger - now
                if left <= 0:
                    self._forget(worker)
                    self._spawn_task(self._stop, worker)
                elif nearest is None or left < nearest:
                    nearest = left
        return nearest

    def stop_pools(self, package: str, version: str) -> None:
        """Stop the workers of a package version (it is uninstalled, and unused)."""
        for key in [k for k in self._pools if k[:2] == (package, version)]:
            for worker in list(self._pools.pop(key)):
                self._forget(worker)
                if self._tg is not None:
                    self._spawn_task(self._stop, worker)

    async def aclose(self) -> None:
        """Stop every worker."""
        pools, self._pools = self._pools, defaultdict(list)
        with anyio.CancelScope(shield=True):
            for workers in pools.values():
                for worker in workers:
                    await self._stop(worker)
        if not self._pids:
            _remove(self._temp_root)
            self._temp_root = None

    # --- attempts ------------------------------------------------------------------------------

    async def execute(
        self, attempt: Attempt, reporter: Reporter, is_cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        spec = attempt.spec
        location = self._where(spec)
        sync = spec.sync
        key = (spec.package, spec.version, attempt.tenant)
        worker = self._pick(key, location, sync)
        cost = worker.capacity if sync else 1
        worker.load += cost
        try:
            if not worker.ready.is_set():
                await worker.ready.wait()
            if worker.failure is not None:
                raise worker.failure
            return await self._run(worker, attempt, reporter, sync)
        finally:
            worker.load -= cost
            if not worker.load:
                worker.idle_since = anyio.current_time()
                self._idle_changed.set()

    async def _run(self, worker: _Worker, attempt: Attempt, reporter: Reporter,
                   sync: bool) -> dict[str, Any]:
        # the worker makes it when the node first asks for it (in its tenant's directory,
        # which exists before the worker starts: the worker is confined to it)
        work_dir = self._work_dir(attempt.tenant, attempt.run_id)
        call = _Call(reporter, sync)
        slot = worker.next_slot()
        worker.calls[slot] = call
        try:
            try:
                if worker.alive:
                    await worker.send(encode(Start(
                        slot=slot, node_type=attempt.spec.type, dispatch_id=attempt.dispatch_id,
                        run_id=attempt.run_id, node_id=attempt.node_id,
                        task_id=attempt.task_id, attempt=attempt.attempt,
                        parameters=attempt.parameters, tenant=attempt.tenant,
                        work_dir=work_dir)))
                if worker.alive:
                    await call.done.wait()
            except BaseException:  # stopped (cancel, timeout, failFast): stop it there too
                with anyio.CancelScope(shield=True):
                    await self._stop_call(worker, slot, call)
                raise
        finally:
            del worker.calls[slot]
        outcome = call.outcome
        if outcome is None:
            raise await self._crashed(worker, attempt.spec)
        if isinstance(outcome, Failed):
            error = ErrorInfo(code=outcome.code, message=outcome.message,
                              details=outcome.details)
            raise AttemptFailed(error, retryable=outcome.retryable)
        return outcome.result

    def _work_dir(self, tenant: str, run_id: str) -> str:
        """The run's work directory, as the worker is told it (the last one is kept: the
        attempts of one run tend to come together)."""
        if self.work_dirs is None:
            return ""
        if self._last_work_dir[0] != (tenant, run_id):
            self._last_work_dir = ((tenant, run_id), str(self.work_dirs.path(tenant, run_id)))
        return self._last_work_dir[1]

    async def _stop_call(self, worker: _Worker, slot: int, call: _Call) -> None:
        """Cancel an attempt inside its worker; kill the worker if that does not end it in
        time (a sync node cannot be cancelled: its worker is killed at once)."""
        if call.done.is_set() or not worker.alive:
            return
        if not call.sync:
            await worker.send(encode(Cancel(slot)))
            with anyio.move_on_after(self.config.kill_grace_seconds):
                await call.done.wait()
            if call.done.is_set():
                return
        self._forget(worker)
        await self._stop(worker)

    def _where(self, spec: NodeType) -> Location:
        """Where the node type's code lives; AttemptFailed if nowhere a worker can reach
        (what was found is kept until the catalog changes)."""
        catalog = self.catalog
        if catalog is not None:
            if self._locations_generation != catalog.generation:
                self._locations.clear()
                self._locations_generation = catalog.generation
            found = self._locations.get(spec.key)
            if found is not None:
                return found
        location = None if catalog is None else catalog.location(spec.package, spec.version)
        if location is None or catalog is None or catalog.get(
                spec.package, spec.version, spec.type, retired=True) is None:
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE,
                message=f"node type {spec.type!r} of {spec.package}=={spec.version} is not "
                        "installed any more",
                details={"remediation": f"install {spec.package}=={spec.version} and submit "
                                        "again"}), retryable=False)
        if location.python is None:
            problem = self._importable.get(spec.key, "")
            if problem == "":
                problem = self._importable[spec.key] = _not_importable(catalog, spec)
            if problem is not None:
                raise AttemptFailed(ErrorInfo(code=Code.UNAVAILABLE, message=problem),
                                    retryable=False)
        self._locations[spec.key] = location
        return location

    def _pick(self, key: _Key, location: Location, sync: bool) -> _Worker:
        """A worker with room for the attempt (the busiest that has, so that the others
        stay idle and can be retired), or a new one."""
        pool = self._pools[key]
        best: _Worker | None = None
        for worker in pool:
            if not worker.alive:
                continue
            room = worker.capacity - worker.load
            if (room == worker.capacity if sync else room >= 1) and (
                    best is None or worker.load > best.load):
                best = worker
        if best is not None:
            return best
        if self._tg is None:
            raise RuntimeError("the subprocess executor is not running (start its run() "
                               "first, as Host.running() does)")
        capacity = self.config.concurrency_for(key[0])
        worker = _Worker(key, location, capacity)
        pool.append(worker)
        self._spawn_task(self._serve, worker)
        return worker

    def _spawn_task(self, fn: Callable[[_Worker], Any], worker: _Worker) -> None:
        assert self._tg is not None
        self._tg.start_soon(fn, worker)

    def _forget(self, worker: _Worker) -> None:
        """Take a worker out of its pool: no attempt is given to it any more."""
        worker.alive = False
        pool = self._pools.get(worker.key)
        if pool is not None and worker in pool:
            pool.remove(worker)

    # --- a worker's life -----------------------------------------------------------------------

    async def _serve(self, worker: _Worker) -> None:
        """Start a worker, then read what it sends until its pipe closes; then end it and
        settle what was in flight in it."""
        try:
            await self._start(worker)
        except AttemptFailed as exc:
            worker.failure = exc
            self._forget(worker)
            worker.ready.set()
            with anyio.CancelScope(shield=True):
                await self._stop(worker)
            return
        except BaseException:
            self._forget(worker)
            worker.failure = AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE, message="the executor stopped"), retryable=True)
            worker.ready.set()
            with anyio.CancelScope(shield=True):
                await self._stop(worker)
            raise
        try:
            await self._read(worker)
        finally:
            self._forget(worker)
            with anyio.CancelScope(shield=True):
                await self._stop(worker)
                for call in worker.calls.values():
                    call.done.set()  # outcome None: the worker died under it

    async def _read(self, worker: _Worker) -> None:
        """Take the worker's frames until its pipe closes: on asyncio by a reader callback
        (what arrives is handed on in the loop turn that saw it: no task switch, no
        re-registration per read, a chain pays this per attempt); else by waiting."""
        buffer = bytearray()
        try:
            if _on_asyncio():
                await self._read_by_callback(worker, buffer)
            else:
                while data := await worker.receive():
                    self._frames(worker, buffer, data)
        except (OSError, anyio.ClosedResourceError, ValueError):
            pass  # killed, or broken: what was in flight fails below

    async def _read_by_callback(self, worker: _Worker, buffer: bytearray) -> None:
        loop = asyncio.get_running_loop()
        fd = worker.rfd
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, 1 << 20)
                if data:
                    self._frames(worker, buffer, data)
                    return
            except BlockingIOError:
                return
            except (OSError, ValueError) as exc:
                if not ended.done():
                    ended.set_exception(exc)
                    loop.remove_reader(fd)
                return
            if not ended.done():
                ended.set_result(None)
                loop.remove_reader(fd)

        worker.read_ended = ended
        loop.add_reader(fd, readable)
        try:
            await ended
        finally:
            worker.read_ended = None
            if worker.rfd == fd:
                loop.remove_reader(fd)

    def _frames(self, worker: _Worker, buffer: bytearray, data: bytes) -> None:
        buffer += data
        calls = worker.calls
        for body in split(buffer):
            message = decode_to_host(body)
            if isinstance(message, Report):
                call = calls.get(message.slot)
                if call is not None and not call.done.is_set():
                    call.reporter(message.report)  # a NodeReport, as it came
            elif isinstance(message, Done | Failed):
                call = calls.get(message.slot)
                if call is not None:
                    call.outcome = message
                    call.done.set()

    async def _forward_stderr(self, worker: _Worker) -> None:
        """What reaches the worker's stderr goes to the attempt in it, as its "stderr" log
        channel (print() in node code is routed by the worker itself, per attempt); with
        several in flight, or none, to the daemon's log."""
        process = worker.process
        assert process is not None and process.stderr is not None
        pending = b""
        try:
            async for data in process.stderr:
                pending += data
                if b"\n" in pending:
                    text, _, pending = pending.rpartition(b"\n")
                    self._stderr(worker, text.decode(errors="replace") + "\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            if pending:
                self._stderr(worker, pending.decode(errors="replace"))
            worker.stderr_done.set()

    def _stderr(self, worker: _Worker, text: str) -> None:
        worker.stderr_tail.extend(text.splitlines())
        calls = [c for c in worker.calls.values() if not c.done.is_set()]
        if len(calls) == 1:
            calls[0].reporter(Chunk("stderr", text))
        elif worker.ready.is_set():
            package, version, tenant = worker.key
            log.info("worker %d (%s==%s, tenant %s): %s", worker.pid, package, version,
                     tenant, text.rstrip("\n"))

    async def _start(self, worker: _Worker) -> None:
        package, version, tenant = worker.key
        if self.sandbox.landlock == "require" and not self.landlock:
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE,
                message="[sandbox] landlock = \"require\", but this kernel has no Landlock: "
                        "no worker is started unconfined",
            ), retryable=False)
        location = worker.location
        env = {k: v for k, v in os.environ.items()
               if k not in _SCRUB and not k.startswith("NODEHOST_")}
        if location.python is None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        else:  # its own environment: nothing of the daemon's on its path
            for name in _NOT_FOR_ENVIRONMENTS:
                env.pop(name, None)
        if self.config.memory_limit_mb:
            env["NODEHOST_WORKER_MEMORY_MB"] = str(self.config.memory_limit_mb)
        if self.config.worker_poll_us:
            env["NODEHOST_WORKER_POLL_US"] = str(self.config.worker_poll_us)
        temp = self._make_temp(tenant) if self.landlock else None
        worker.temp = temp
        if temp is not None:
            env["TMPDIR"] = temp
            env[CONFINEMENT_ENV] = json.encode(self._confinement(tenant, temp,
                                                                 location.home)).decode()
        with anyio.CancelScope(shield=True):  # a process started is a process we must end
            # pipes of our own rather than the process's streams: frames are read and
            # written on the file descriptors directly (a chain pays this per attempt)
            stdin_r, stdin_w = os.pipe()
            stdout_r, stdout_w = os.pipe()
            try:
                process = await anyio.open_process(
                    [location.python or self.python, "-m", "nodehost.executors.worker"],
                    stdin=stdin_r, stdout=stdout_w, env=env, start_new_session=True)
            except OSError as exc:
                for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
                    os.close(fd)
                _remove(temp)
                worker.temp = None
                raise AttemptFailed(ErrorInfo(
                    code=Code.UNAVAILABLE, message=f"the worker for {package}=={version} "
                    f"cannot start: {exc}"), retryable=False) from None
            os.close(stdin_r)
            os.close(stdout_w)
            os.set_blocking(stdin_w, False)
            os.set_blocking(stdout_r, False)
            worker.wfd, worker.rfd = stdin_w, stdout_r
        worker.process = process
        worker.pid = process.pid
        self.started += 1
        self._pids.add(process.pid)
        self._spawn_task(self._forward_stderr, worker)
        functions = None if location.python is not None else self._functions(package, version)
        await worker.send(encode(Load(package=package, version=version, tenant=tenant,
                                      functions=functions, sandbox=self.sandbox)))
        buffer = bytearray()
        hello = None
        try:
            while hello is None:
                data = await worker.receive()
                if not data:
                    raise EOFError
                buffer += data
                bodies = split(buffer)
                if bodies:
                    hello = decode_to_host(bodies[0])
        except (EOFError, OSError, anyio.ClosedResourceError, ValueError):
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await worker.stderr_done.wait()
                await process.wait()
            tail = list(worker.stderr_tail)
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE,
                message=f"the worker for {package}=={version} did not start "
                        f"({_exit_text(process.returncode)}): "
                        f"{tail[-1] if tail else 'no output'}",
                details={"stderr": "\n".join(tail)},
            ), retryable=False) from None
        if not isinstance(hello, Hello) or buffer:  # pragma: no cover - protocol violation
            raise AttemptFailed(ErrorInfo(code=Code.INTERNAL, message=f"worker said {hello!r} "
                                          "before hello"), retryable=True)
        worker.ready.set()

    def _functions(self, package: str, version: str) -> dict[str, str]:
        catalog = self.catalog
        assert catalog is not None
        found = {}
        for node_type in catalog.types(package, version):
            code = catalog.code((package, version, node_type))
            if code is not None:
                found[node_type] = f"{code.fn.__module__}:{code.fn.__qualname__}"
        return found

    def _make_temp(self, tenant: str) -> str:
        """A confined worker's own TMPDIR: where tempfile works even when the temp directory
        itself had to be carved (a protected path in it), and what it leaves there goes with
        it. In a directory of ours that the worker may remove it from: so it can clean up
        after itself when the daemon is gone."""
        if self._temp_root is None or not os.path.isdir(self._temp_root):
            self._temp_root = tempfile.mkdtemp(prefix="nodehost-workers-")
        return tempfile.mkdtemp(prefix=f"{tenant}-", dir=self._temp_root)

    def _confinement(self, tenant: str, temp: str, home: str | None) -> Confinement:
        work = [temp, tempfile.gettempdir(), *self.sandbox.file_roots]
        protect = list(self.protect)
        work_dirs = self.work_dirs
        if work_dirs is not None:  # its tenant's directory, none of the others'
            tenant_dir = work_dirs.tenant_dir(tenant)
            tenant_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            work.insert(0, str(tenant_dir))
            protect.append(str(work_dirs.root))
        # a package's own environment lies in the state directory: it may read that
        rules = for_tenant(tenant, work=work, protect=protect, temp=temp)
        if home is not None:
            rules.read.append(home)
        return rules

    async def _crashed(self, worker: _Worker, spec: NodeType) -> AttemptFailed:
        process = worker.process
        code = None
        if process is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                code = await process.wait()
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

    async def _stop(self, worker: _Worker) -> None:
        """End a worker and its process group: stdin closed, then SIGTERM, then SIGKILL."""
        worker.alive = False
        process = worker.process
        if worker.stopping is not None:  # under way already (or done)
            await worker.stopping.wait()
            return
        worker.stopping = anyio.Event()
        if process is None:
            worker.close_pipes()
            worker.stopping.set()
            return
        if process.returncode is None:
            for sig, wait in ((signal.SIGTERM, self.config.kill_grace_seconds),
                              (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(worker.pid, sig)
                except ProcessLookupError:
                    break
                with anyio.move_on_after(wait):
                    await process.wait()
                    break
        with _ignore_gone():  # the leader is gone; what it started may not be
            os.killpg(worker.pid, signal.SIGKILL)
        worker.close_pipes()
        await process.aclose()
        self._pids.discard(worker.pid)
        _remove(worker.temp)
        worker.temp = None
        worker.stopping.set()


class _ignore_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ProcessLookupError | PermissionError)


def _not_importable(catalog: Catalog | None, spec: NodeType) -> str | None:
    """Why a worker could not import a node function of the daemon's own (None: it can)."""
    code = None if catalog is None else catalog.code(spec.key)
    if code is None:
        return f"node type {spec.type!r} has no code in this interpreter"
    module, qualname = code.fn.__module__, code.fn.__qualname__
    if "<locals>" in qualname or module == "__main__":
        return (f"node type {spec.type!r} cannot run in a subprocess: its function "
                f"{module}.{qualname} is not importable (define it at module level, "
                f"or run package {spec.package!r} in-process)")
    return None


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio's
        return False
    return True


def _remove(temp: str | None) -> None:
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"
