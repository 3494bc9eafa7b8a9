"""The `nodehost` command (tier 6).

Exit codes: 0 the run succeeded (or the document is valid), 1 the run failed, 2 bad input
(usage, config, an invalid document), 130 the run was cancelled (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

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
from .embedded import EmbeddedHost, load_document
from .errors import PluginLoadError, WorkflowInvalid
from .events import Envelope
from .model import RunOptions, StartRunRequest, Workflow
from .plugins import Catalog, PluginHost
from .runstate import Run, run_summary
from .validate import compile_workflow, definition_hash

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class _Fail(click.ClickException):
    """A problem the user can fix, reported on stderr with exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {self.message}")


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


def _load(path: str, config: Config, catalog: Catalog) -> StartRunRequest:
    """Decode and compile a document, or exit 2 listing every problem with its path."""
    limits = config.documents.limits()
    try:
        request = load_document(_read(path), limits)
        compile_workflow(request.workflow, catalog, limits)
    except WorkflowInvalid as exc:
        lines = "\n".join(f"  {issue.path}: {issue.message}" for issue in exc.issues)
        raise _Fail(f"{path} is not a valid workflow ({len(exc.issues)} problem(s)):\n{lines}") \
            from None
    return request


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
        request = _load(workflow, config, catalog)
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
    wf = request.workflow
    digest = definition_hash(wf)
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
@click.option("--quiet", "-q", is_flag=True, help="No progress, no log lines.")
def run(workflow: str, config_path: str | None, output: str, fail_fast: bool, quiet: bool) -> None:
    """Run WORKFLOW here, without a daemon, and show its progress.

    Exits 0 when the run succeeded, 1 when it failed, 130 when it was cancelled.
    """
    config = _config(config_path)
    err = Console(stderr=True)
    catalog = _catalog(config, err)
    request = _load(workflow, config, catalog)
    if fail_fast:
        request = msgspec.structs.replace(request, options=RunOptions(fail_fast=True))
    # progress goes where the person is: stdout for humans, stderr when stdout is for JSON
    screen = Console(stderr=output == "json", highlight=False, soft_wrap=True)
    show = not quiet and (output == "human" or screen.is_terminal)
    run = anyio.run(_run, config, catalog, request, screen if show else None)
    summary = msgspec.to_builtins(run_summary(run))
    if output == "json":
        sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
    else:
        print_summary(screen, summary, summary.get("nodes") or [])
    sys.exit({"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(run.status, EXIT_FAILED))


async def _run(config: Config, catalog: Catalog, request: StartRunRequest,
               screen: Console | None) -> Run:
    view = RunView(screen, total=_count_tasks(request)) if screen is not None else None

    def on_event(envelope: Envelope) -> None:
        if view is not None:
            view.feed(envelope)

    host = EmbeddedHost(catalog, limits=config.scheduler.limits(),
                        document_limits=config.documents.limits(), on_event=on_event)
    with view if view is not None else nullcontext():
        async with host.running(), anyio.create_task_group() as tg:
            run = host.submit(request)
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


def _count_tasks(request: StartRunRequest) -> int:
    """Nodes at every depth, counting a subgraph once per container that runs it."""
    subgraphs: dict[str, Workflow] = {}

    def collect(wf: Workflow) -> None:
        for sub in wf.subgraphs:
            subgraphs.setdefault(sub.id, sub.definition)
            collect(sub.definition)

    def count(wf: Workflow) -> int:
        total = len(wf.nodes)
        for node in wf.nodes:
            cfg = node.container_config
            if node.is_container and cfg is not None and cfg.subgraph_id in subgraphs:
                total += count(subgraphs[cfg.subgraph_id])
        return total

    collect(request.workflow)

    return count(request.workflow)
