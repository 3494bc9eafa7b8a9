"""The scheduler: turns engine effects into running attempts, timers and cancellations (tier 4).

The engine decides *what* happens; the scheduler decides *when*. It keeps the ready queue
(fair between tenants, then between runs), enforces the limits (global parallelism, per
package, one node at a time per `concurrencyKey`), runs attempts through executors inside
cancel scopes, and fires the timers the engine asked for (retry backoff, timeouts).

Everything that changes engine state goes through `_step()`, a plain synchronous call that
drains the engine's effects and starts whatever may start now, so a finished node releases
its dependents without a trip through another task.

Attempts run on worker tasks that are kept (no more workers than attempts at once): a worker
that finishes an attempt runs the next queued one after a checkpoint, so starting an attempt
costs a hand-off rather than a new task (a task per attempt was a third of the per-node cost).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import traceback
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from .commands import CancelRun, Command, Complete, Fail, Interrupt, Report
from .config import OutputsConfig, SchedulerConfig
from .engine import Attempt, Cancel, Engine, Ready, RunFinished, Timer
from .errors import Code, NodeError
from .executors import AttemptFailed, Executor
from .executors.inprocess import InProcessExecutor
from .model import ErrorInfo
from .outputs import LogBudget, check_value
from .reports import Artifact, Chunk, Partial

if TYPE_CHECKING:
    from .descriptors import NodeType
    from .reports import NodeReport
    from .runstate import Run, Task
    from .store.store import Store

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

# Workers running attempts back to back let the other tasks (API, event streams, the journal)
# run at least this often, and after at most this many attempts (see Scheduler._worker).
_SLICE = 0.002
_BURST = 32
_monotonic = time.monotonic  # the clock of those slices (tests replace it)


class _ReadyQueue:
    """Ready tasks, served round-robin between tenants and, within a tenant, between runs."""

    def __init__(self) -> None:
        self._tenants: OrderedDict[str, OrderedDict[str, deque[Task]]] = OrderedDict()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, task: Task, *, front: bool = False) -> None:
        run = task.run
        runs = self._tenants.get(run.tenant)
        if runs is None:
            runs = self._tenants[run.tenant] = OrderedDict()
        queue = runs.get(run.run_id)
        if queue is None:
            queue = runs[run.run_id] = deque()
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)
        self._len += 1

    def pop(self) -> Task | None:
        if not self._len:
            return None
        tenant, runs = next(iter(self._tenants.items()))
        run_id, queue = next(iter(runs.items()))
        task = queue.popleft()
        self._len -= 1
        if queue:
            runs.move_to_end(run_id)
        else:
            del runs[run_id]
        if runs:
            self._tenants.move_to_end(tenant)
        else:
            del self._tenants[tenant]
        return task


class _Running:
    """One attempt handed to a worker: what it runs, the cancel scope it runs in, whether
    the host asked it to stop. Called with a report, it is the node's Reporter: it applies
    the report to the engine under the attempt's dispatch id (fenced there)."""

    __slots__ = ("_budget", "_engine", "_outputs", "attempt", "cancelled", "dispatch_id",
                 "run_id", "scope", "task")

    def __init__(self, engine: Engine, attempt: Attempt, task: Task,
                 outputs: OutputsConfig) -> None:
        self._engine = engine
        self._outputs = outputs
        self._budget: LogBudget | None = None
        self.attempt = attempt
        self.dispatch_id = attempt.dispatch_id
        self.run_id = attempt.run_id
        self.task = task
        self.scope: anyio.CancelScope | None = None  # set while a worker runs it
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def __call__(self, report: NodeReport) -> None:
        kind = type(report)
        if kind is Chunk:
            budget = self._budget
            if budget is None:
                budget = self._budget = LogBudget(self._outputs)
            admitted = budget.admit(report)  # type: ignore[arg-type]
            if admitted is None:
                return
            report = admitted
        elif kind is Partial or kind is Artifact:
            value = report.update if kind is Partial else report.artifact  # type: ignore[union-attr]
            problem = check_value(value, self._outputs.max_partial_bytes,
                                  "partial result" if kind is Partial else "artifact")
            if problem is not None:
                self.fail(problem)
                return
        self._engine.apply(Report(run_id=self.run_id, dispatch_id=self.dispatch_id,
                                  report=report))

    def fail(self, error: ErrorInfo) -> None:
        """Fail the attempt for what it produced (not retried: it would produce it again),
        and stop it."""
        self._engine.apply(Fail(run_id=self.run_id, dispatch_id=self.dispatch_id,
                                code=error.code, message=error.message, details=error.details,
                                retryable=False))
        self.cancel()


class _IdleWorker:
    """A worker task waiting for its next attempt."""

    __slots__ = ("event", "item")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.item: _Running | None = None


class Scheduler:
    """Runs the engine's work on anyio. Start `run` in a task group before submitting."""

    def __init__(
        self,
        engine: Engine,
        config: SchedulerConfig = SchedulerConfig(),
        *,
        executor_for: Callable[[NodeType], Executor] | None = None,
        journal: Store | None = None,
        outputs: OutputsConfig = OutputsConfig(),
    ) -> None:
        self.engine = engine
        self.limits = config
        self.outputs = outputs
        # With a journal, an attempt of a node that is not idempotent starts only once its
        # Dispatch record is durable: a crash before that loses the dispatch (the node runs
        # after the restart, once); after it, the restart fails it with E.HOST.RESTARTED
        # rather than running it a second time. Idempotent nodes start at once.
        self._journal = journal
        self._unsynced: deque[tuple[int, _Running]] = deque()  # (lsn of its Dispatch, ...)
        if journal is not None:
            journal.durable_listeners.append(self._durable)
        if executor_for is None:
            default = InProcessExecutor(threads=config.parallelism)
            executor_for = lambda spec: default  # noqa: E731
        self._executor_for = executor_for
        self._ready = _ReadyQueue()
        self._attempts: dict[str, _Running] = {}
        self._per_package: defaultdict[str, int] = defaultdict(int)
        self._keys_busy: set[str] = set()
        self._parked: defaultdict[tuple[str, str], deque[Task]] = defaultdict(deque)
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_ids = itertools.count()
        self._timer_wake = anyio.Event()
        self._finished: dict[str, anyio.Event] = {}
        self._tg: TaskGroup | None = None
        self._closing = False
        # Attempts run on worker tasks, started as needed (never more than attempts running)
        # and kept: a worker that finishes an attempt takes the next one queued, or waits for
        # one, so starting an attempt is a hand-off rather than a new task.
        self._queued: deque[_Running] = deque()
        self._idle_workers: list[_IdleWorker] = []
        self._workers = 0
        self._paused = False
        self._idle = anyio.Event()
        self.dispatched = 0
        # since the workers last let the event loop take a turn: when, and how many attempts
        self._slice = 0
        self._slice_start = _monotonic()
        self._slice_attempts = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: attempts run in this task group, timers fire from here."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._closing = False
                task_status.started()
                self._step()  # runs submitted (or recovered) before the scheduler started
                try:
                    await self._timer_loop()
                finally:
                    self._closing = True
                    self._tg = None
        finally:
            # attempts handed to no worker (the scheduler stopped first) never started
            unstarted = [*self._queued, *(running for _, running in self._unsynced)]
            for attempt in unstarted:
                self._attempts.pop(attempt.dispatch_id, None)
                self._release(attempt.task, attempt.attempt.spec)
            self._queued.clear()
            self._unsynced.clear()
            self._idle_workers.clear()

    async def _timer_loop(self) -> None:
        while True:
            now = anyio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                self.engine.apply(timer.command())
                self._step()
            delay = self._timers[0][0] - now if self._timers else float("inf")
            self._timer_wake = anyio.Event()
            with anyio.move_on_after(delay):
                await self._timer_wake.wait()

    # --- what clients call -------------------------------------------------------------------

    def apply(self, command: Command) -> bool:
        """Apply a command to the engine (a Submit, a CancelRun...), then start whatever it
        made ready; returns whether the engine accepted it."""
        accepted = self.engine.apply(command)
        self._step()
        return accepted

    def cancel(self, run_id: str, reason: str = "cancelled by request") -> bool:
        """Cancel a run: running attempts are stopped, the rest is marked cancelled."""
        return self.apply(CancelRun(run_id=run_id, reason=reason))

    def set_limits(self, limits: SchedulerConfig) -> None:
        """New limits, live (a config reload); more room is used at once."""
        self.limits = limits
        parked, self._parked = self._parked, defaultdict(deque)
        for waiting in parked.values():  # everyone gets another look; the blocked park again
            for task in reversed(waiting):
                self._ready.push(task, front=True)
        self._step()

    def pause(self) -> None:
        """Start nothing new (a graceful stop); running attempts go on."""
        self._paused = True

    async def wait_idle(self) -> None:
        """Wait until no attempt is running."""
        while self._attempts:
            self._idle = anyio.Event()
            await self._idle.wait()

    def interrupt_running(self, reason: str) -> int:
        """Stop every running attempt and queue its node again (journaled by the engine), so
        that it runs after the restart; returns how many were stopped."""
        stopped = 0
        for dispatch_id, running in list(self._attempts.items()):
            if self.engine.apply(Interrupt(run_id=running.run_id, dispatch_id=dispatch_id,
                                           reason=reason)):
                stopped += 1
            running.cancel()
        self.engine.take_effects()  # the Ready effects are for the next start, not this one
        return stopped

    async def wait_run(self, run_id: str) -> Run:
        """Wait until a run has finished; KeyError if it is unknown."""
        run = self.engine.runs[run_id]
        if not run.final:
            event = self._finished.setdefault(run_id, anyio.Event())
            await event.wait()
        return run

    @property
    def serving(self) -> bool:
        """True while `run` is serving (the watchdog's sign of life)."""
        return self._tg is not None and not self._closing

    def statistics(self) -> dict[str, int]:
        return {
            "ready": len(self._ready),
            "running": len(self._attempts),
            "waiting_for_journal": len(self._unsynced),
            "parked": sum(len(q) for q in self._parked.values()),
            "timers": len(self._timers),
            "dispatched": self.dispatched,
        }

    # --- the synchronous core ----------------------------------------------------------------

    def _step(self, reserve: int = 0) -> None:
        """Apply the engine's effects, then start what the limits allow.

        Applying an effect never calls back into the engine, so one pass drains them all.
        `reserve` is 1 when called by a worker that takes a queued attempt next itself.
        """
        for effect in self.engine.take_effects():
            if isinstance(effect, Ready):
                self._ready.push(effect.task)
            elif isinstance(effect, Cancel):
                attempt = self._attempts.get(effect.dispatch_id)
                if attempt is not None:
                    attempt.cancel()
            elif isinstance(effect, Timer):
                self._add_timer(effect)
            elif isinstance(effect, RunFinished):
                event = self._finished.pop(effect.run.run_id, None)  # one per run, not kept
                if event is not None:
                    event.set()
        self._pump(reserve)

    def _add_timer(self, timer: Timer) -> None:
        deadline = anyio.current_time() + timer.delay
        first = self._timers[0][0] if self._timers else None
        heapq.heappush(self._timers, (deadline, next(self._timer_ids), timer))
        if first is None or deadline < first:
            self._timer_wake.set()

    def _pump(self, reserve: int = 0) -> None:
        """Dispatch ready tasks while the global limit has room; hand them to workers."""
        if self._tg is None or self._closing or self._paused:
            return
        parallelism = self.limits.parallelism
        while len(self._attempts) < parallelism:
            task = self._ready.pop()
            if task is None:
                break
            spec = task.g.spec
            if spec is None:
                continue
            blocked = self._blocked_on(task, spec)
            if blocked is not None:
                self._parked[blocked].append(task)
                continue
            attempt = self.engine.dispatch(task)
            if attempt is None:
                continue  # no longer ready: cancelled, or its run ended
            self._acquire(task, spec)
            running = _Running(self.engine, attempt, task, self.outputs)
            self._attempts[attempt.dispatch_id] = running
            self.dispatched += 1
            journal = self._journal
            if (journal is not None and not task.g.idempotent
                    and (lsn := journal.last_lsn) > journal.durable_lsn):
                self._unsynced.append((lsn, running))
                journal.hurry()
            else:
                self._queued.append(running)
            # dispatch() may have set a timeout timer
            for effect in self.engine.take_effects():
                if isinstance(effect, Timer):
                    self._add_timer(effect)
                else:  # pragma: no cover - dispatch only ever sets timers
                    raise AssertionError(f"unexpected effect of dispatch: {effect!r}")
        self._assign(reserve)

    def _durable(self, lsn: int) -> None:
        """The journal is durable up to `lsn`: start the attempts that waited for it."""
        unsynced = self._unsynced
        if not unsynced or unsynced[0][0] > lsn:
            return
        while unsynced and unsynced[0][0] <= lsn:
            self._queued.append(unsynced.popleft()[1])
        if self._tg is not None and not self._closing:
            self._assign(0)

    def _assign(self, reserve: int) -> None:
        """Hand queued attempts to idle workers, starting workers while there are fewer
        than attempts; leave `reserve` queued for the worker that is about to look at the
        queue itself.

        A worker holds one attempt at a time, so with at least as many workers as attempts
        the workers between two attempts (about to look at the queue) take the rest.
        """
        queued = self._queued
        idle = self._idle_workers
        assert self._tg is not None
        while len(queued) > reserve:
            if idle:
                worker = idle.pop()
                worker.item = queued.popleft()
                worker.event.set()
            elif self._workers < len(self._attempts):
                self._workers += 1
                self._tg.start_soon(self._worker, queued.popleft(), name="nodehost attempts")
            else:
                return

    def _blocked_on(self, task: Task, spec: NodeType) -> tuple[str, str] | None:
        key = task.g.concurrency_key
        if key is not None and key in self._keys_busy:
            return ("key", key)
        limit = self.limits.for_package(spec.package)
        if limit is not None and self._per_package[spec.package] >= limit:
            return ("package", spec.package)
        return None

    def _acquire(self, task: Task, spec: NodeType) -> None:
        self._per_package[spec.package] += 1
        if task.g.concurrency_key is not None:
            self._keys_busy.add(task.g.concurrency_key)

    def _release(self, task: Task, spec: NodeType) -> None:
        self._per_package[spec.package] -= 1
        self._unpark(("package", spec.package))
        key = task.g.concurrency_key
        if key is not None:
            self._keys_busy.discard(key)
            self._unpark(("key", key))

    def _unpark(self, resource: tuple[str, str]) -> None:
        """Give the first task waiting for a freed resource its turn again."""
        waiting = self._parked.get(resource)
        if not waiting:
            return
        self._ready.push(waiting.popleft(), front=True)
        if not waiting:
            del self._parked[resource]

    # --- one attempt ---------------------------------------------------------------------------

    async def _worker(self, attempt: _Running) -> None:
        """Run attempts one after another: the one given, then queued ones, waiting for
        more when there are none (until the scheduler stops).

        Attempts run in a cancel scope of the worker's, made anew only after one of them was
        cancelled: entering and leaving a scope per attempt cost as much as the engine's
        whole transition. Nodes that return without waiting for anything never give the
        event loop a turn, so the workers do, together: once `_SLICE` seconds or `_BURST`
        attempts have gone by since the last turn, a worker yields after its attempt (and the
        others yield after theirs until the first of them is back from its turn, which means
        that whatever was waiting to run has run). Per worker, 32 workers made 32 slices in
        a row, and event subscribers fell behind and were dropped.
        """
        item: _Running | None = attempt
        idle: _IdleWorker | None = None
        try:
            while True:
                with anyio.CancelScope() as scope:
                    while item is not None:
                        attempt, item = item, None  # run once, even if cancelled
                        await self._run_attempt(attempt, scope)
                        if scope.cancel_called:
                            break  # the next attempt runs in a scope of its own
                        self._slice_attempts += 1
                        if (self._slice_attempts >= _BURST
                                or _monotonic() - self._slice_start >= _SLICE):
                            slice_ = self._slice
                            await anyio.lowlevel.checkpoint()
                            if self._slice == slice_:  # the first one back: a new slice
                                self._new_slice()
                        if self._queued:
                            item = self._queued.popleft()
                if item is None and self._queued:
                    item = self._queued.popleft()
                if item is None:
                    idle = _IdleWorker()
                    self._idle_workers.append(idle)
                    await idle.event.wait()
                    # (no new slice: the tasks queued behind this one have not had a turn)
                    item, idle = idle.item, None
        finally:
            self._workers -= 1
            if idle is not None and idle in self._idle_workers:
                self._idle_workers.remove(idle)

    def _new_slice(self) -> None:
        """The event loop just had a turn."""
        self._slice += 1
        self._slice_start = _monotonic()
        self._slice_attempts = 0

    async def _run_attempt(self, running: _Running, scope: anyio.CancelScope) -> None:
        """Run one attempt in `scope` and hand its outcome to the engine; a cancellation of
        the attempt propagates out of here, to the worker's scope."""
        attempt = running.attempt
        run_id, dispatch_id = running.run_id, running.dispatch_id
        engine = self.engine
        try:
            if running.cancelled:
                return  # stopped before it started: the engine has already moved on
            running.scope = scope
            executor = self._executor_for(attempt.spec)
            result = await executor.execute(attempt, running, running.is_cancelled)
            problem = check_value(result, self.outputs.max_result_bytes, "result")
            if problem is None:
                engine.apply(Complete(run_id=run_id, dispatch_id=dispatch_id, result=result))
            else:
                running.fail(problem)
        except NodeError as exc:
            details = dict(exc.details or {})
            if exc.remediation:
                details["remediation"] = exc.remediation
            engine.apply(Fail(run_id=run_id, dispatch_id=dispatch_id, code=exc.code,
                              message=exc.message, details=details or None,
                              retryable=exc.retryable))
        except AttemptFailed as exc:
            engine.apply(Fail(run_id=run_id, dispatch_id=dispatch_id, code=exc.error.code,
                              message=exc.error.message, details=exc.error.details,
                              retryable=exc.retryable))
        except Exception as exc:
            engine.apply(Fail(run_id=run_id, dispatch_id=dispatch_id, code=Code.RUNNER_FAILURE,
                              message=f"{type(exc).__name__}: {exc}",
                              details={"traceback": _short_traceback(exc)}))
        finally:
            running.scope = None  # a later cancel of this attempt must not reach the next
            if scope.cancel_called and not running.cancelled:  # pragma: no cover
                log.error("attempt %s was cancelled by nobody", dispatch_id)
            self._attempts.pop(dispatch_id, None)
            self._release(running.task, attempt.spec)
            if not self._attempts:
                self._idle.set()
            if not self._closing:
                self._step(reserve=1)  # this worker takes the next queued attempt itself


def _short_traceback(exc: BaseException, limit: int = 8) -> str:
    """The last frames of a traceback, enough to find the line in a node package."""
    return "".join(traceback.format_exception(exc, limit=-limit))[-4000:]
