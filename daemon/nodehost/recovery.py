"""Start-up recovery: rebuild the engine from the store, and apply retention (tier 4).

Replay needs each run's graph again. A run whose node package has since been removed still
comes back: its nodes get a stand-in that fails with E.DISPATCH.UNAVAILABLE if it is ever
dispatched, so the history stays readable and nothing blocks start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import Code, NodeError
from .journaled import JournaledEngine
from .model import Workflow
from .node_api import Context, NodeSpec
from .plugins import Catalog
from .runstate import Run
from .store.store import Recovered
from .validate import Limits, compile_workflow

__all__ = ["RecoveryCatalog", "Retention", "recover", "runs_to_forget"]

log = logging.getLogger(__name__)


class RecoveryCatalog:
    """The installed catalog, with stand-ins for node types that are gone."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._missing: dict[tuple[str, str, str], NodeSpec] = {}

    def get(self, package: str, version: str, type: str) -> NodeSpec:
        spec = self._catalog.get(package, version, type)
        if spec is not None:
            return spec
        key = (package, version, type)
        if key not in self._missing:
            async def unavailable(ctx: Context, params: dict) -> dict:
                raise NodeError(Code.UNAVAILABLE, f"node type {type!r} of {package}=={version} "
                                "is not installed any more",
                                remediation=f"install {package}=={version} and submit again")

            self._missing[key] = NodeSpec(package=package, version=version, type=type,
                                          fn=unavailable, params_type=None, result_type=None)
        return self._missing[key]

    def versions(self, package: str) -> list[str]:
        return self._catalog.versions(package)

    def types(self, package: str, version: str) -> list[str]:
        return self._catalog.types(package, version)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    runs: int
    active: int
    records: int
    seconds: float
    resumed: dict[str, int]


def recover(engine: JournaledEngine, recovered: Recovered, catalog: Catalog,
            limits: Limits, *, keep_events: int | None = None) -> RecoveryReport:
    """Replay what the store read into `engine`, then settle what the restart interrupted.

    `keep_events`: how many of the newest events to rebuild for the replay buffer (the
    older ones keep their ids but are not built: nobody could be sent them)."""
    lookup = RecoveryCatalog(catalog)

    def compile(workflow: Workflow):  # type: ignore[no-untyped-def]
        return compile_workflow(workflow, lookup, limits)  # type: ignore[arg-type]

    applied = engine.replay(recovered.records, compile, keep_events=keep_events)
    resumed = engine.resume()
    active = sum(1 for r in engine.runs.values() if not r.final)
    report = RecoveryReport(len(engine.runs), active, applied, recovered.seconds, resumed)
    if applied:
        log.info("recovered %d runs (%d active) from %d records; %d attempts interrupted by "
                 "the restart", report.runs, active, applied, resumed["interrupted"])
    return report


@dataclass(frozen=True, slots=True)
class Retention:
    max_age: timedelta | None
    max_runs: int | None


def runs_to_forget(runs: Iterable[Run], retention: Retention, now: datetime) -> list[str]:
    """Finished runs past their age, then the oldest beyond the count to keep."""
    finished = sorted((r for r in runs if r.final),
                      key=lambda r: (r.finished_at or r.created_at, r.run_id))
    drop: list[str] = []
    keep = finished
    if retention.max_age is not None:
        horizon = now - retention.max_age
        drop = [r.run_id for r in finished if (r.finished_at or r.created_at) < horizon]
        keep = finished[len(drop):]
    if retention.max_runs is not None and len(keep) > retention.max_runs:
        drop += [r.run_id for r in keep[: len(keep) - retention.max_runs]]
    return drop
