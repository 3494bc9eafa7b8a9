"""The `nodehost` command (tier 6).

Exit codes: 0 the run succeeded (or the document is valid), 1 the run failed, 2 bad input
(usage, config, an invalid document, an error answer from the daemon), 3 the daemon cannot
be reached, 130 the run was cancelled (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import anyio
import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, collector
from .config import Config, ConfigError
from .configfile import load_config
from .console import RunView, print_summary
from .documents import Documents, Prepared
from .environments import AlreadyInstalled, Environments, InstallFailed, load_into
from .errors import PluginLoadError, WorkflowInvalid
from .events import Envelope
from .executors.polling import run_options
from .graph import Graph
from .host import Host, build_host
from .model import RunOptions
from .plugins import Catalog, PluginHost
from .policy import Policy
from .runstate import Run, run_summary
from .store.store import StoreFailed

if TYPE_CHECKING:
    from .client import Client

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class _Fail(click.ClickException):
    """A problem the user can fix, reported on stderr with exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        console = Console(stderr=True, highlight=False, soft_wrap=True)
        console.print(f"[bold red]error:[/] {escape(self.message)}")


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
    for problem in load_into(host.catalog, _packages_root(config)):
        err.print(f"[yellow]warning:[/] {problem}", highlight=False, markup=False)
    return host.catalog


def _packages_root(config: Config) -> str:
    """Where `nodehost packages install` puts each package version's environment."""
    return os.path.join(config.server.state_path(), "packages")


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _Fail(f"cannot read {path}: {exc.strerror}") from None


def _load(path: str, documents: Documents, policy: Policy | None = None,
          tenant: str = "default") -> Prepared:
    """Decode and compile a document and hold it to the tenant's [policy], or exit 2
    listing every problem with its path."""
    try:
        prepared = documents.prepare(_read(path))
        refused = [] if policy is None else policy.issues(
            tenant, prepared.compiled.workflow, prepared.graph, prepared.at,
            prepared.compiled.node_types)
        if refused:
            raise WorkflowInvalid(refused)
        return prepared
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
@click.option("--tenant", default="default", show_default=True,
              help="Hold the workflow to this tenant's [policy] (which node types it may use).")
def validate(workflow: str, config_path: str | None, output: str, tenant: str) -> None:
    """Check WORKFLOW (a workflow or a run request, JSON) without running it."""
    config = _config(config_path)
    err = Console(stderr=True)
    catalog = _catalog(config, err)
    try:
        prepared = _load(workflow, Documents(catalog, config.documents), Policy(config.policy),
                         tenant)
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
    views: list[RunView] = []  # the live view, once there is one, sees every event

    def on_event(envelope: Envelope) -> None:
        for view in views:
            view.feed(envelope)

    host = build_host(config, catalog, observers=[on_event])
    prepared = _load(workflow, host.documents, host.policy)
    collector.tune_for_daemon()
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
    run = anyio.run(_run, host, prepared, screen if show else None, views,
                    backend_options=run_options(config.scheduler.loop_poll_us))
    if output != "json" and not show:
        screen = Console(highlight=False, soft_wrap=True)
    summary = msgspec.to_builtins(run_summary(run))
    if output == "json":
        sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
    else:
        print_summary(screen, summary, summary.get("nodes") or [])
    sys.exit({"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(run.status, EXIT_FAILED))


async def _run(host: Host, prepared: Prepared, screen: Console | None,
               views: list[RunView]) -> Run:
    view = RunView(screen, total=_count_tasks(prepared.graph)) if screen is not None else None
    if view is not None:
        views.append(view)
    with view if view is not None else nullcontext():
        async with host.running(), anyio.create_task_group() as tg:
            run = host.submit(prepared)
            tg.start_soon(_cancel_on_signal, host, run.run_id)
            await host.scheduler.wait_run(run.run_id)
            tg.cancel_scope.cancel()
    return run


async def _cancel_on_signal(host: Host, run_id: str) -> None:
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


# --- the daemon, and commands that talk to it -----------------------------------------------

EXIT_UNREACHABLE = 3

_url_option = click.option(
    "--url", default=None,
    help="The daemon: unix:PATH, http://HOST:PORT or tcp://HOST:PORT (default: $NODEHOST_URL, "
         "else client.url, else server.listen of the config). Token: $NODEHOST_TOKEN or "
         "client.token_file.",
)


EXIT_DAMAGED_STATE = 65  # EX_DATAERR; the systemd unit does not restart on it


class _DamagedFail(_Fail):
    exit_code = EXIT_DAMAGED_STATE


@main.command()
@_config_option
@click.option("--accept-journal-loss", is_flag=True, envvar="NODEHOST_ACCEPT_JOURNAL_LOSS",
              help="Start even though the history in the state directory is incomplete or "
                   "damaged: the damaged files are moved into damaged-<time>/ beside the "
                   "journal and the daemon goes on with what is left. Only after reading "
                   "what a normal start refused on (or set NODEHOST_ACCEPT_JOURNAL_LOSS=1).")
def serve(config_path: str | None, accept_journal_loss: bool) -> None:
    """Run the daemon: the HTTP API on the configured socket, until SIGTERM or SIGINT.

    The first signal stops admitting runs and starting nodes, lets running nodes finish
    (server.drain_seconds), queues the rest again to run after the restart, closes event
    streams and exits 0; a second one stops without waiting. SIGHUP reloads the config.
    """
    from .service import Daemon, DamagedState, StartError
    from .systemd import configure_logging

    config = _config(config_path)
    configure_logging(config.server.log_level.upper())
    daemon = Daemon(config, _catalog(config, Console(stderr=True)),
                    accept_journal_loss=accept_journal_loss,
                    config_path=config_path or os.environ.get("NODEHOST_CONFIG") or None)
    try:
        daemon.open()
    except DamagedState as exc:
        raise _DamagedFail(str(exc)) from None
    except (ConfigError, StartError) as exc:
        raise _Fail(str(exc)) from None
    collector.tune_for_daemon()
    try:
        # asyncio: uvicorn runs on nothing else
        anyio.run(_serve, daemon, config_path,
                  backend_options=run_options(config.scheduler.loop_poll_us))
    except BaseExceptionGroup as group:
        failed = group.subgroup(StoreFailed)
        if failed is None:
            raise
        # logged already; exit non-zero so that systemd restarts us on what is durable
        raise SystemExit(f"nodehost: stopped: {failed.exceptions[0]}") from None


async def _serve(daemon: Any, config_path: str | None) -> None:
    import logging

    log = logging.getLogger("nodehost.cli")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        try:
                            daemon.reload(load_config(config_path))
                        except (ConfigError, ValueError) as exc:
                            log.error("reload refused, the configuration is unchanged: %s", exc)
                        continue
                    log.info("%s: stopping", signal.Signals(signum).name)
                    daemon.stop()

            tg.start_soon(on_signal)
            await daemon.run()
            tg.cancel_scope.cancel()


@main.command()
@_config_option
def reload(config_path: str | None) -> None:
    """Make the running daemon reread its config (SIGHUP): limits, tokens, log level."""
    config = _config(config_path)
    pidfile = os.path.join(config.server.runtime_path(), "nodehost.pid")
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise _Fail(f"no running daemon found through {pidfile}: {exc}") from None
    Console(highlight=False).print(f"asked the daemon (pid {pid}) to reload its config")


def _with_client(config_path: str | None, url: str | None, call: Any) -> Any:
    """Run `await call(client)`; API errors exit 2, an unreachable daemon exits 3."""
    from .client import ApiFailure, Client, Unreachable, resolve_target, resolve_token

    config = _config(config_path)
    try:
        target = resolve_target(config, url)
        token = resolve_token(config)
    except ConfigError as exc:
        raise _Fail(str(exc)) from None

    async def go() -> Any:
        async with Client(target, token) as client:
            return await call(client)

    try:
        return anyio.run(go)
    except Unreachable as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(EXIT_UNREACHABLE)
    except ApiFailure as exc:
        lines = [exc.message] + [f"  {d.get('path', '')}: {d.get('message', '')}"
                                 for d in exc.details if isinstance(d, dict)]
        raise _Fail(escape("\n".join(lines))) from None


def _progress_screen(output: str) -> Console | None:
    """Where live progress goes: stdout for humans; stderr, if a terminal, with -o json."""
    if output != "json":
        return Console(highlight=False, soft_wrap=True)
    screen = Console(stderr=True, highlight=False, soft_wrap=True)
    return screen if screen.is_terminal else None


async def _watch(client: Any, run_id: str, output: str, reconnect_timeout: float) -> int:
    from .client import count_nodes, watch_run

    screen = _progress_screen(output)
    view = RunView(screen, total=count_nodes(await client.definition(run_id))) \
        if screen is not None else None
    with view if view is not None else nullcontext():
        summary = await watch_run(client, run_id, view.feed if view else lambda e: None,
                                  reconnect_timeout=reconnect_timeout)
    if output == "json":
        sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
    else:
        print_summary(Console(highlight=False, soft_wrap=True), summary,
                      summary.get("nodes") or [])
    return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(summary["status"],
                                                                    EXIT_FAILED)


_reconnect_option = click.option(
    "--reconnect-timeout", type=float, default=30.0, show_default=True,
    help="Seconds to keep trying to reconnect to the event stream before giving up (exit 3).",
)


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, allow_dash=True))
@_config_option
@_url_option
@_output_option
@click.option("--watch", "-w", "follow", is_flag=True, help="Then watch it, like `watch`.")
@click.option("--client-id", default=None, help="clientId of the run (default: the "
              "document's, else 'cli').")
@click.option("--idempotency-key", default=None,
              help="Submitting again with the same key and document gives the same run.")
@_reconnect_option
def submit(workflow: str, config_path: str | None, url: str | None, output: str, follow: bool,
           client_id: str | None, idempotency_key: str | None, reconnect_timeout: float
           ) -> None:
    """Submit WORKFLOW (a workflow or a run request, JSON) to the daemon; print the run id.

    With --watch, exits like `watch`: 0 succeeded, 1 failed, 130 cancelled.
    """
    raw = _read(workflow)
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _Fail(f"{workflow} is not valid JSON: {exc}") from None
    if isinstance(document, dict) and "workflow" not in document:
        document = {"workflow": document, "clientId": client_id or "cli"}
    elif isinstance(document, dict) and client_id:
        document["clientId"] = client_id
    body = msgspec.json.encode(document)

    async def call(client: Any) -> int:
        ref = await client.submit(body, idempotency_key=idempotency_key)
        if output != "json":
            click.echo(ref["runId"])
        elif not follow:
            click.echo(msgspec.json.encode(ref))
        if not follow:
            return EXIT_OK
        return await _watch(client, ref["runId"], output, reconnect_timeout)

    sys.exit(_with_client(config_path, url, call))


@main.command()
@click.argument("run_id", metavar="RUN")
@_config_option
@_url_option
@_output_option
@_reconnect_option
def watch(run_id: str, config_path: str | None, url: str | None, output: str,
          reconnect_timeout: float) -> None:
    """Follow RUN live (per-node progress and log lines) until it ends.

    Exits 0 when it succeeded, 1 when it failed, 130 when it was cancelled. Ctrl-C stops
    watching (exit 130); the run goes on.
    """
    try:
        code = _with_client(config_path, url,
                            lambda client: _watch(client, run_id, output, reconnect_timeout))
    except KeyboardInterrupt:
        Console(stderr=True, highlight=False).print(
            f"stopped watching; run {run_id} goes on (nodehost runs cancel {run_id} to cancel it)")
        code = EXIT_CANCELLED
    sys.exit(code)


@main.group()
def runs() -> None:
    """List, show and cancel the daemon's runs."""


@runs.command("list")
@_config_option
@_url_option
@_output_option
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed",
                                             "cancelled"]), default=None)
@click.option("--client-id", default=None)
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True,
              help="Runs per page.")
@click.option("--all", "every", is_flag=True, help="Follow the cursor through every page.")
def runs_list(config_path: str | None, url: str | None, output: str, status: str | None,
              client_id: str | None, limit: int, every: bool) -> None:
    """List runs, oldest first."""

    async def call(client: Any) -> dict[str, Any]:
        page = await client.list_runs(limit=limit, status=status, client_id=client_id)
        items = list(page["items"])
        while every and page.get("nextCursor"):
            page = await client.list_runs(limit=limit, status=status, client_id=client_id,
                                          cursor=page["nextCursor"])
            items.extend(page["items"])
        return {"items": items, "nextCursor": page.get("nextCursor")}

    listing = _with_client(config_path, url, call)
    if output == "json":
        click.echo(msgspec.json.encode(listing))
        return
    out = Console(highlight=False, soft_wrap=True)
    if not listing["items"]:
        out.print("no runs")
    else:
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("run", no_wrap=True, min_width=36)
        for column in ("status", "client", "created"):
            table.add_column(column)
        for run in listing["items"]:
            table.add_row(run["runId"], run["status"], escape(run["clientId"]),
                          run.get("createdAt") or "")
        out.print(table)
    if listing.get("nextCursor"):
        out.print("[dim]more runs: use --all, or --limit[/]")


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@_config_option
@_url_option
@_output_option
def runs_show(run_id: str, config_path: str | None, url: str | None, output: str) -> None:
    """Show RUN and its nodes."""

    async def call(client: Client) -> dict[str, Any]:
        return (await client.get_run(run_id))[0]

    summary = _with_client(config_path, url, call)
    if output == "json":
        click.echo(msgspec.json.encode(summary))
    else:
        print_summary(Console(highlight=False, soft_wrap=True), summary,
                      summary.get("nodes") or [])


@runs.command("cancel")
@click.argument("run_id", metavar="RUN")
@_config_option
@_url_option
@_output_option
def runs_cancel(run_id: str, config_path: str | None, url: str | None, output: str) -> None:
    """Cancel RUN (exit 2 if it has already ended)."""

    async def call(client: Client) -> dict[str, Any]:
        return await client.cancel(run_id)

    ref = _with_client(config_path, url, call)
    if output == "json":
        click.echo(msgspec.json.encode(ref))
    else:
        click.echo(f"run {ref['runId']} {ref['status']}")


@main.group(invoke_without_command=True)
@_config_option
@_output_option
@click.pass_context
def packages(ctx: click.Context, config_path: str | None, output: str) -> None:
    """List the installed node packages, their versions, node types and where they live.

    Plugins that failed to load are listed under "not loaded" (`errors` with -o json), and
    the command exits 1; two providers of one package version exit 2, as `run` would.
    `nodehost packages install` / `uninstall` manage package versions in environments of
    their own.
    """
    if ctx.invoked_subcommand is not None:
        return
    config = _config(config_path)
    host = PluginHost()
    try:
        reports = host.load_entry_points(allow=config.plugins.allow, deny=config.plugins.deny)
    except PluginLoadError as exc:
        raise _Fail(f"node packages conflict: {exc}") from None
    problems = load_into(host.catalog, _packages_root(config))
    listing = host.catalog.describe()
    policy = Policy(config.policy)
    tenants = sorted({"default", *config.policy.tenants, *(t.tenant for t in config.auth.tokens)})
    for entry in listing:
        # an environment's package runs in its workers, whatever [executors] says
        entry["executor"] = ("subprocess" if entry["environment"]
                             else config.executors.kind_for(entry["name"]))
        for node in entry["nodes"]:
            if node["privileged"]:
                node["executor"] = "subprocess"  # never on the daemon's own privileges
            verdicts = {t: policy.verdict(t, node["type"], node["privileged"]) for t in tenants}
            node["allowedFor"] = [t for t, v in verdicts.items() if v.allowed]
            node["refusedFor"] = {t: v.reason for t, v in verdicts.items() if not v.allowed}
    errors = [{"plugin": r.plugin, "error": r.error} for r in reports if not r.ok]
    errors += [{"plugin": "environments", "error": problem} for problem in problems]
    skipped = [{"plugin": r.plugin, "reason": r.skipped} for r in reports if r.skipped]
    if output == "json":
        click.echo(msgspec.json.encode({"packages": listing, "errors": errors,
                                        "skipped": skipped}))
    else:
        _print_packages(Console(highlight=False, soft_wrap=True), listing, errors, skipped)
    sys.exit(EXIT_FAILED if errors else EXIT_OK)


@packages.command("install")
@click.argument("specs", nargs=-1, required=True)
@click.option("--find-links", "find_links", multiple=True, metavar="DIR",
              help="Look for distributions in DIR too (passed to the installer).")
@click.option("--index-url", metavar="URL", help="The package index to install from.")
@click.option("--installer", type=click.Choice(["auto", "uv", "pip"]), default="auto",
              show_default=True, help="uv when it is installed (auto), or pip.")
@_config_option
def packages_install(specs: tuple[str, ...], find_links: tuple[str, ...],
                     index_url: str | None, installer: str, config_path: str | None) -> None:
    """Install node package versions, each in an environment of its own.

    SPEC is a wheel file, a project directory or a requirement (`acme-textstats==1.0.0`).
    Versions of one distribution live side by side; a running daemon picks them up on
    `nodehost reload`.
    """
    config = _config(config_path)
    err = Console(stderr=True, highlight=False)
    host = PluginHost()
    try:
        host.load_entry_points(allow=config.plugins.allow, deny=config.plugins.deny)
    except PluginLoadError as exc:
        raise _Fail(f"node packages conflict: {exc}") from None
    taken = {key: host.catalog.origin(*key) or "?" for key in host.catalog.packages()}
    environments = Environments(_packages_root(config))
    try:
        done = environments.install(specs, find_links=find_links, index_url=index_url,
                                    installer=installer, taken=taken,
                                    progress=lambda m: err.print(m, markup=False))
    except InstallFailed as exc:
        raise _Fail(f"not installed: {exc}") from None
    for outcome in done:
        if isinstance(outcome, AlreadyInstalled):
            click.echo(f"{outcome.distribution} {outcome.version}: installed already "
                       f"({outcome.path}); nothing done")
        else:
            names = ", ".join(f"{p.name}=={p.version}" for p in outcome.packages)
            click.echo(f"installed {outcome.distribution} {outcome.version} ({names}) in "
                       f"{outcome.path}")
    _tell_daemon(config)


@packages.command("uninstall")
@click.argument("name")
@click.argument("version")
@_config_option
def packages_uninstall(name: str, version: str, config_path: str | None) -> None:
    """Remove a package version installed with `nodehost packages install` (NAME is the
    distribution or the node package name)."""
    config = _config(config_path)
    environments = Environments(_packages_root(config))
    found = environments.find(name, version)
    if found is None:
        raise _Fail(f"{name} {version} is not installed in {environments.root}")
    if found.retired:
        raise _Fail(f"{found.distribution} {found.version} is being uninstalled already: the "
                    "daemon removes it once no run uses it")
    if _daemon_pid(config) is None:
        environments.remove(found)
        click.echo(f"uninstalled {found.distribution} {found.version} ({found.path})")
        return
    # a running daemon's runs may use it: it offers it to no new run, removes it once unused
    environments.retire(found)
    if _tell_daemon(config):
        click.echo(f"uninstalling {found.distribution} {found.version}: offered to no new "
                   "run; the daemon removes it once no run uses it")
    else:  # it stopped meanwhile
        environments.remove(found)
        click.echo(f"uninstalled {found.distribution} {found.version} ({found.path})")


def _daemon_pid(config: Config) -> int | None:
    """The pid of the daemon running on this config's directories, if one is."""
    pidfile = os.path.join(config.server.runtime_path(), "nodehost.pid")
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _tell_daemon(config: Config) -> bool:
    """Ask a running daemon to rescan the environments (SIGHUP, as `nodehost reload`);
    False if none runs (it reads them when it starts)."""
    pid = _daemon_pid(config)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return False
    return True


def _print_packages(out: Console, listing: list[dict[str, Any]], errors: list[dict[str, Any]],
                    skipped: list[dict[str, Any]]) -> None:
    if not listing:
        out.print("no node packages installed", style="yellow")
    for entry in listing:
        out.print(f"{entry['name']} {entry['version']}", style="bold", markup=False, end="")
        where = f"; in {entry['environment']}" if entry["environment"] else ""
        out.print(f"  ({entry['origin'].split(' (environment')[0]}; runs "
                  f"{entry['executor']}{where})", markup=False)
        if entry["description"]:
            out.print(f"  {entry['description']}", markup=False)
        width = max((len(n["type"]) for n in entry["nodes"]), default=0)
        for node in entry["nodes"]:
            out.print(f"    {node['type']:<{width}}  {node['description']}".rstrip(),
                      markup=False)
            marks = ["privileged"] if node["privileged"] else []
            if node["refusedFor"]:
                marks.append("allowed for: " + (", ".join(node["allowedFor"]) or "no tenant"))
            if marks:
                out.print(f"    {'':<{width}}  [{'; '.join(marks)}]", style="dim",
                          markup=False)
    if errors:
        out.print("\nnot loaded:", style="bold red")
        for error in errors:
            out.print(f"  {error['plugin']}: {error['error']}", markup=False)
    if skipped:
        out.print("\nskipped:", style="bold")
        for skip in skipped:
            out.print(f"  {skip['plugin']}: {skip['reason']}", markup=False)
