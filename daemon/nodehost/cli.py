"""The `nodehost` command (tier 6).

Exit codes: 0 the run succeeded (or the document is valid), 1 the run failed, 2 bad input
(usage, config, an invalid document), 130 the run was cancelled (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from contextlib import nullcontext
from typing import Any

import anyio
import click
import msgspec
from rich.console import Console

from . import __version__
from .config import Config, ConfigError, load_config
from .console import RunView, print_summary
from .embedded import EmbeddedHost, Prepared, prepare
from .errors import PluginLoadError, WorkflowInvalid
from .events import Envelope
from .graph import Graph
from .model import RunOptions
from .plugins import Catalog, PluginHost
from .runstate import Run, run_summary

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class _Fail(click.ClickException):
    """A problem the user can fix, reported on stderr with exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {self.message}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nodehost")
def main() -> None:
    """nodehost: run workflow graphs on this machine with node packages from plugins."""


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _Fail(str(exc)) from None


def _catalog(config: Config, err: Console) -> Catalog:
    host = PluginHost()
    try:
        reports = host.load_entry_points(allow=config.plugins.allow, deny=config.plugins.deny)
    except PluginLoadError as exc:
        raise _Fail(f"node packages conflict: {exc}") from None
    for report in reports:
        if not report.ok:
            err.print(f"[yellow]warning:[/] plugin {report.plugin} not loaded: {report.error}",
                      highlight=False)
    return host.catalog


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _Fail(f"cannot read {path}: {exc.strerror}") from None


def _load(path: str, config: Config, catalog: Catalog) -> Prepared:
    """Decode and compile a document, or exit 2 listing every problem with its path."""
    try:
        return prepare(_read(path), catalog, config.documents.limits())
    except WorkflowInvalid as exc:
        lines = "\n".join(f"  {issue.path}: {issue.message}" for issue in exc.issues)
        raise _Fail(f"{path} is not a valid workflow ({len(exc.issues)} problem(s)):\n{lines}") \
            from None


_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Config file (default: $NODEHOST_CONFIG, else built-in defaults).",
)
_output_option = click.option(
    "--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True,
    help="json prints a machine-readable result on stdout.",
)


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, allow_dash=True))
@_config_option
@_output_option
def validate(workflow: str, config_path: str | None, output: str) -> None:
    """Check WORKFLOW (a workflow or a run request, JSON) without running it."""
    config = _config(config_path)
    err = Console(stderr=True)
    catalog = _catalog(config, err)
    try:
        prepared = _load(workflow, config, catalog)
    except _Fail as exc:
        if output != "json":
            raise
        issues = []
        raw = exc.message.splitlines()[1:]
        for line in raw:
            where, _, what = line.strip().partition(": ")
            issues.append({"path": where, "message": what})
        click.echo(msgspec.json.encode({"valid": False, "issues": issues}))
        sys.exit(EXIT_USAGE)
    wf = prepared.request.workflow
    digest = prepared.definition_hash
    if output == "json":
        click.echo(msgspec.json.encode({"valid": True, "definitionHash": digest}))
        return
    Console(highlight=False, soft_wrap=True).print(
        f"[green]valid[/]: {workflow} ({len(wf.nodes)} nodes, {len(wf.edges)} edges, "
        f"{len(wf.subgraphs)} subgraphs; definitionHash {digest[:12]})"
    )


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, allow_dash=True))
@_config_option
@_output_option
@click.option("--fail-fast", is_flag=True, help="Cancel everything at the first node failure.")
@click.option(
    "--progress", type=click.Choice(["auto", "live", "plain", "none"]), default="auto",
    show_default=True,
    help="live bars, plain lines, or none; auto: bars on a terminal, lines otherwise (none "
         "with -o json unless stderr is a terminal).",
)
def run(workflow: str, config_path: str | None, output: str, fail_fast: bool,
        progress: str) -> None:
    """Run WORKFLOW here, without a daemon, and show its progress.

    Exits 0 when the run succeeded, 1 when it failed, 130 when it was cancelled.
    """
    config = _config(config_path)
    err = Console(stderr=True)
    catalog = _catalog(config, err)
    prepared = _load(workflow, config, catalog)
    if fail_fast:
        request = msgspec.structs.replace(prepared.request, options=RunOptions(fail_fast=True))
        prepared = dataclasses.replace(prepared, request=request)
    # progress goes where the person is: stdout for humans, stderr when stdout is for JSON
    to_stderr = output == "json"
    if progress == "auto":
        screen = Console(stderr=to_stderr, highlight=False, soft_wrap=True)
        show = output == "human" or screen.is_terminal
    else:
        screen = Console(stderr=to_stderr, highlight=False, soft_wrap=True,
                         force_terminal=progress == "live" or None)
        show = progress != "none"
    run = anyio.run(_run, config, catalog, prepared, screen if show else None)
    if output != "json" and not show:
        screen = Console(highlight=False, soft_wrap=True)
    summary = msgspec.to_builtins(run_summary(run))
    if output == "json":
        sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
    else:
        print_summary(screen, summary, summary.get("nodes") or [])
    sys.exit({"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(run.status, EXIT_FAILED))


async def _run(config: Config, catalog: Catalog, prepared: Prepared,
               screen: Console | None) -> Run:
    view = RunView(screen, total=_count_tasks(prepared.graph)) if screen is not None else None

    def on_event(envelope: Envelope) -> None:
        if view is not None:
            view.feed(envelope)

    host = EmbeddedHost.from_config(catalog, config, on_event=on_event)
    with view if view is not None else nullcontext():
        async with host.running(), anyio.create_task_group() as tg:
            run = host.submit(prepared)
            tg.start_soon(_cancel_on_signal, host, run.run_id)
            await host.scheduler.wait_run(run.run_id)
            tg.cancel_scope.cancel()
    return run


async def _cancel_on_signal(host: EmbeddedHost, run_id: str) -> None:
    """First Ctrl-C / SIGTERM cancels the run (and it is reported); a second one aborts."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            run = host.engine.runs[run_id]
            if run.final or run.cancel_reason is not None:
                raise KeyboardInterrupt
            host.scheduler.cancel(run_id, f"cancelled by {signal.Signals(signum).name}")


def _count_tasks(graph: Graph) -> int:
    """Nodes at every depth (a subgraph counts once per container that runs it)."""
    return sum(1 + (_count_tasks(g.subgraph) if g.subgraph is not None else 0)
               for g in graph.nodes.values())
