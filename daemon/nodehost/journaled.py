"""The engine with a journal: every call that changes state is recorded, and can be replayed.

The engine is deterministic given its inputs, their timestamps and two counters (the event
sequence and the dispatch sequence), so a record of each accepted call is enough to rebuild
every run exactly after a restart, event ids and dispatch ids included. Records carry those
counters, so history can be compacted (finished runs forgotten) without renumbering.

Recovery = replay, then `resume()`: attempts that were running when the host went down
are failed with E.HOST.RESTARTED (and retried if the node declared itself idempotent and has
attempts left); ready nodes are handed back to the scheduler; backoffs and container
timeouts are started again. No I/O here: `append` only buffers into the store.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from . import collector
from .engine import Dispatch, Engine, Ready, Timer, utc_now
from .errors import Code, Issue, WorkflowInvalid
from .graph import Graph
from .model import ErrorInfo, RunOptions, Workflow
from .runstate import Run, Task
from .store import records as rec

__all__ = ["JournaledEngine"]

log = logging.getLogger(__name__)

Compile = Callable[[Workflow], Graph]

_workflow_decoder = msgspec.msgpack.Decoder(Workflow)


# per distinct document of a replay: its workflow, graph and bytes, or why it cannot be run
_Compiled = tuple[Workflow, Graph, bytes] | WorkflowInvalid


def _decode_workflow(document: bytes) -> Workflow:
    """A journaled document as a Workflow; WorkflowInvalid if it no longer decodes as one."""
    try:
        return _workflow_decoder.decode(document)
    except msgspec.ValidationError as exc:
        raise WorkflowInvalid([Issue("$", str(exc))]) from None


class JournaledEngine(Engine):
    """An Engine whose accepted calls are appended to a journal through `append`."""

    def __init__(self, *, append: Callable[[rec.Record], Any],
                 clock: Callable[[], datetime] = utc_now, **kw: Any) -> None:
        self._clock: datetime | None = None
        self._wall = clock
        super().__init__(now=self._now_for_call, **kw)
        self._append = append
        self._replaying = False

    def _now_for_call(self) -> datetime:
        return self._clock if self._clock is not None else self._wall()

    def _begin(self) -> datetime:
        """The timestamp of the call starting now (recorded, and used by the engine)."""
        ts = self._clock = self._wall()
        return ts

    def _record(self, record: rec.Record) -> None:
        if not self._replaying:
            self._append(record)

    # --- the calls that change state ---------------------------------------------------------

    def submit(self, workflow: Workflow, graph: Graph, *, client_id: str, definition_hash: str,
               tenant: str = "default", options: RunOptions | None = None,
               run_id: str | None = None, document: bytes | None = None,
               meta: dict[str, Any] | None = None) -> Run:
        ts, seq = self._begin(), self.event_seq
        run = super().submit(workflow, graph, client_id=client_id,
                             definition_hash=definition_hash, tenant=tenant, options=options,
                             run_id=run_id, document=document, meta=meta)
        self._record(rec.Submit(
            ts, seq, run.run_id, tenant, client_id,
            msgspec.Raw(run.document),
            definition_hash, msgspec.to_builtins(run.options), meta,
        ))
        return run

    def cancel_run(self, run_id: str, reason: str = "cancelled by request") -> bool:
        ts, seq = self._begin(), self.event_seq
        changed = super().cancel_run(run_id, reason)
        if changed:
            self._record(rec.CancelRun(ts, seq, run_id, reason))
        return changed

    def dispatch(self, task: Task) -> Dispatch | None:
        ts, seq = self._begin(), self.event_seq
        dispatch = super().dispatch(task)
        if dispatch is not None:
            self._record(rec.Dispatch(ts, seq, task.run.run_id, task.task_id,
                                      self._dispatch_seq))
        return dispatch

    def complete(self, dispatch_id: str, result: dict[str, Any]) -> bool:
        task = self._dispatches.get(dispatch_id)
        ts, seq = self._begin(), self.event_seq
        accepted = super().complete(dispatch_id, result)
        if accepted and task is not None:
            self._record(rec.Complete(ts, seq, task.run.run_id, dispatch_id, result))
        return accepted

    def fail(self, dispatch_id: str, error: ErrorInfo, *, retryable: bool = True) -> bool:
        task = self._dispatches.get(dispatch_id)
        ts, seq = self._begin(), self.event_seq
        accepted = super().fail(dispatch_id, error, retryable=retryable)
        if accepted and task is not None:
            self._record(rec.Fail(ts, seq, task.run.run_id, dispatch_id, error.code,
                                  error.message, error.details, retryable))
        return accepted

    def interrupt(self, dispatch_id: str, reason: str) -> bool:
        task = self._dispatches.get(dispatch_id)
        ts, seq = self._begin(), self.event_seq
        accepted = super().interrupt(dispatch_id, reason)
        if accepted and task is not None:
            self._record(rec.Interrupt(ts, seq, task.run.run_id, dispatch_id, reason))
        return accepted

    def fire_timer(self, timer: Timer) -> None:
        ts, seq = self._begin(), self.event_seq
        before = len(self._effects)
        super().fire_timer(timer)
        if self.event_seq != seq or len(self._effects) != before:  # it was not stale
            task = timer.task
            self._record(rec.FireTimer(ts, seq, task.run.run_id, task.task_id, timer.kind,
                                       timer.fence))

    def _report(self, kind: str, dispatch_id: str, args: list[Any]) -> bool:
        task = self._dispatches.get(dispatch_id)
        ts, seq = self._begin(), self.event_seq
        accepted = getattr(super(), f"report_{kind}")(dispatch_id, *args)
        if accepted and task is not None:
            self._record(rec.Report(ts, seq, task.run.run_id, dispatch_id, kind, args))
        return accepted

    def report_progress(self, dispatch_id: str, fraction: float | None, stage: str | None,
                        message: str | None) -> bool:
        return self._report("progress", dispatch_id, [fraction, stage, message])

    def report_chunk(self, dispatch_id: str, channel: str, text: str | None, data: bytes | None,
                     mime_type: str | None, terminal: bool,
                     metadata: dict[str, Any] | None) -> bool:
        return self._report("chunk", dispatch_id,
                            [channel, text, data, mime_type, terminal, metadata])

    def report_partial(self, dispatch_id: str, update: dict[str, Any]) -> bool:
        return self._report("partial", dispatch_id, [update])

    def report_metric(self, dispatch_id: str, name: str, value: float) -> bool:
        return self._report("metric", dispatch_id, [name, value])

    def report_artifact(self, dispatch_id: str, artifact: dict[str, Any]) -> bool:
        return self._report("artifact", dispatch_id, [artifact])

    def forget(self, run_ids: Iterable[str]) -> list[str]:
        """Drop finished runs (retention); returns the ids actually dropped."""
        dropped = [r for r in run_ids if r in self.runs and self.runs[r].final]
        for run_id in dropped:
            self.runs.pop(run_id).dispose()
        if dropped:
            ts = self._begin()
            self._record(rec.Forget(ts, self.event_seq, dropped))
        return dropped

    # --- recovery --------------------------------------------------------------------------------

    def replay(self, records: Iterable[rec.Record], compile: Compile, *,
               keep_events: int | None = None) -> int:
        """Apply journaled calls to this (empty) engine; returns how many were applied.

        Runs of the same document share one compiled graph (graphs are read-only), and the
        cycle collector is paused meanwhile (see `collector.paused`). With `keep_events`
        (a list of records), only about the last that many events are built and published
        (enough to fill the replay buffer); older ones keep their ids but are only counted.
        """
        if keep_events is not None and isinstance(records, list) and records:
            self.quiet_until = records[-1].seq - keep_events
        self._replaying = True
        applied = 0
        compiled: dict[bytes, _Compiled] = {}
        try:
            with collector.paused():
                for record in records:
                    self._clock = record.ts
                    self.event_seq = record.seq
                    self._apply(record, compile, compiled)
                    self._effects.clear()
                    applied += 1
        finally:
            self._replaying = False
            self._clock = None
            self.quiet_until = 0
        return applied

    def _apply(self, r: rec.Record, compile: Compile,
               compiled: dict[bytes, _Compiled] | None = None,
               ) -> None:
        if isinstance(r, rec.Submit):
            # the same document (byte for byte) compiles to the same graph, and its runs
            # share one copy of it: once per replay
            key = hashlib.sha256(r.workflow).digest()
            found = compiled.get(key) if compiled is not None else None
            if found is None:
                document = bytes(r.workflow)
                try:
                    workflow = _decode_workflow(document)
                    found = (workflow, compile(workflow), document)
                except WorkflowInvalid as exc:
                    found = exc
                if compiled is not None:
                    compiled[key] = found
            if isinstance(found, WorkflowInvalid):
                log.error("run %s cannot be restored: its workflow no longer validates (%s)",
                          r.run_id, "; ".join(str(i) for i in found.issues[:3]))
                return
            workflow, graph, document = found
            Engine.submit(self, workflow, graph, client_id=r.client_id,
                          definition_hash=r.definition_hash, tenant=r.tenant,
                          options=msgspec.convert(r.options, RunOptions), run_id=r.run_id,
                          document=document, meta=r.meta)
        elif isinstance(r, rec.Dispatch):
            run = self.runs.get(r.run_id)
            if run is not None and r.task_id in run.tasks:
                self._dispatch_seq = r.dispatch_seq - 1
                self._start_attempt(run.tasks[r.task_id])  # no Dispatch to hand out
        elif isinstance(r, rec.Complete):
            Engine.complete(self, r.dispatch_id, r.result)
        elif isinstance(r, rec.Fail):
            Engine.fail(self, r.dispatch_id, ErrorInfo(code=r.code, message=r.message,
                                                       details=r.details),
                        retryable=r.retryable)
        elif isinstance(r, rec.FireTimer):
            run = self.runs.get(r.run_id)
            if run is not None and r.task_id in run.tasks:
                Engine.fire_timer(self, Timer(0.0, r.kind, run.tasks[r.task_id],  # type: ignore[arg-type]
                                              r.fence))
        elif isinstance(r, rec.Interrupt):
            Engine.interrupt(self, r.dispatch_id, r.reason)
        elif isinstance(r, rec.CancelRun):
            Engine.cancel_run(self, r.run_id, r.reason)
        elif isinstance(r, rec.Report):
            getattr(Engine, f"report_{r.kind}")(self, r.dispatch_id, *r.args)
        elif isinstance(r, rec.Forget):
            for run_id in r.run_ids:
                run = self.runs.pop(run_id, None)
                if run is not None:
                    run.dispose()

    def resume(self) -> dict[str, int]:
        """After replay: settle what the restart interrupted and hand work to the scheduler.

        Effects go to `take_effects()` as usual: Ready for queued work, timers for backoffs
        and container timeouts (started afresh), and whatever failing the interrupted
        attempts leads to (a retry, skipped downstreams, a finished run).
        """
        counts = {"interrupted": 0, "ready": 0, "backoff": 0, "containers": 0}
        interrupted: list[Task] = []
        for run in self.runs.values():
            if run.final:
                continue
            for task in run.tasks.values():
                if task.phase == "dispatched" and task.dispatch_id is not None:
                    interrupted.append(task)
                elif task.phase == "ready":
                    counts["ready"] += 1
                    self._effects.append(Ready(task))
                elif task.phase == "backoff":
                    counts["backoff"] += 1
                    self._effects.append(Timer(0.0, "retry", task, task.attempt))
                elif task.phase == "container" and task.g.timeout:
                    counts["containers"] += 1
                    self._effects.append(Timer(task.g.timeout, "timeout", task,
                                               task.try_fence))
        for task in interrupted:
            counts["interrupted"] += 1
            assert task.dispatch_id is not None
            self.fail(task.dispatch_id, ErrorInfo(
                code=Code.HOST_RESTARTED,
                message="the host restarted while the node was running",
                details={"idempotent": task.g.idempotent},
            ), retryable=task.g.idempotent)
        return counts
