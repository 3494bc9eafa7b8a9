"""What the CLI shows while a run goes on, fed with event envelopes (tier 6).

`RunView.feed(envelope)` is a cheap synchronous call, so it can sit right on the engine's
event sink (or on an SSE stream, for `nodehost watch`) without ever falling behind. On a
terminal it draws an overall bar plus one live bar per running node, and prints log lines
above them; anywhere else it prints one plain line per node change and per log line.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .events import Envelope, NodeResultDeltaEvent, NodeStateEvent

__all__ = ["RunView", "print_summary"]

_FINAL = {"succeeded", "failed", "cancelled", "skipped"}
_STYLE = {
    "succeeded": "green", "failed": "bold red", "cancelled": "yellow", "skipped": "dim",
    "running": "cyan", "queued": "dim",
}


class RunView:
    """Live progress of one run from its envelopes; use as a context manager."""

    def __init__(self, console: Console, *, total: int, show_logs: bool = True) -> None:
        self.console = console
        self.show_logs = show_logs
        self.live = console.is_terminal
        self.total = total
        self.done = 0
        self.counts: dict[str, int] = {}
        self._rows: dict[str, TaskID] = {}
        self._status: dict[str, str] = {}
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._started = time.monotonic()

    def __enter__(self) -> RunView:
        if self.live:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                refresh_per_second=8,
            )
            self._progress.start()
            self._overall = self._progress.add_task(self._overall_text(), total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    # --- envelopes ---------------------------------------------------------------------------

    def feed(self, envelope: Envelope) -> None:
        match envelope.data:
            case NodeStateEvent() as event:
                self._node_state(event)
            case NodeResultDeltaEvent() as event if self.show_logs:
                self._delta(event)

    def _node_state(self, event: NodeStateEvent) -> None:
        task_id = event.task_id or event.node_id
        status = event.status
        state = event.state
        before = self._status.get(task_id)
        self._status[task_id] = status
        if status in _FINAL and before not in _FINAL:
            self.done += 1
            self.counts[status] = self.counts.get(status, 0) + 1
        elif before in _FINAL and status not in _FINAL:  # a container loop restarted it
            self.done -= 1
            self.counts[before] -= 1
        message = state.message or ""
        error = state.error.message if state.error is not None else None
        if self._progress is None:
            if status != before or error:
                detail = message if status == "queued" else error or message
                self.console.print(
                    f"{task_id} [{_STYLE.get(status, '')}]{status}[/]"
                    + (f": {escape(detail)}" if detail else ""),
                    highlight=False,
                )
            return
        progress = self._progress
        if self._overall is not None:
            progress.update(self._overall, completed=self.done,
                            description=self._overall_text())
        row = self._rows.get(task_id)
        if status == "running":
            fraction = state.progress
            text = f"{escape(task_id)} [dim]{escape(message)}[/]" if message else escape(task_id)
            if row is None:
                row = self._rows[task_id] = progress.add_task(text, total=None)
            if fraction is None:  # no progress reported: an indeterminate (pulsing) bar
                progress.update(row, description=text)
            else:
                progress.update(row, description=text, total=1.0, completed=fraction)
        elif row is not None:
            progress.remove_task(self._rows.pop(task_id))
        if status in ("failed",) and before != status:
            self.console.print(f"[bold red]✗[/] {escape(task_id)}: {escape(error or 'failed')}")

    def _overall_text(self) -> str:
        failed = self.counts.get("failed", 0)
        text = f"[bold]{self.done}/{self.total} nodes[/]"
        return text + (f" [red]{failed} failed[/]" if failed else "")

    def _delta(self, event: NodeResultDeltaEvent) -> None:
        meta = event.chunk_meta
        text = (event.payload or {}).get("text")
        if meta is None or not isinstance(text, str):
            return
        channel = meta.channel
        task_id = event.task_id or event.node_id
        for line in text.rstrip("\n").splitlines() or [""]:
            self.console.print(f"[dim]{escape(task_id)} {escape(channel)} |[/] {escape(line)}",
                               highlight=False)


def print_summary(console: Console, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
    """A table of every node that did not simply succeed, then one line for the run."""
    rows = [n for n in nodes if n.get("status") != "succeeded"]
    if rows:
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("node")
        table.add_column("status")
        table.add_column("why")
        for node in rows:
            status = node.get("status", "")
            error = node.get("error") or {}
            why = error.get("message") or (node.get("state") or {}).get("message") or ""
            if error.get("code"):
                why = f"{error['code']}: {why}"
            table.add_row(escape(node["taskId"]), f"[{_STYLE.get(status, '')}]{status}[/]",
                          escape(why))
        console.print(table)
    status = run["status"]
    line = f"run {run['runId']} [{_STYLE.get(status, '')}]{status}[/] ({len(nodes)} nodes"
    if run.get("startedAt") and run.get("finishedAt"):
        line += f", {_seconds(run['startedAt'], run['finishedAt']):.2f} s"
    line += ")"
    if run.get("error"):
        line += f": {escape(run['error']['message'])}"
    console.print(line, highlight=False)


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
