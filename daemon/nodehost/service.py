"""The daemon: catalog, engine, scheduler, API and an embedded uvicorn in one task group
(tier 6, the composition root; the only module importing uvicorn).

`Daemon(config, catalog).open()` checks the configuration and binds the listener (so a bad
setup fails before anything starts); `await daemon.run()` serves until `daemon.stop()`.
uvicorn only runs on asyncio, so `run` does too; the app and the engine run anywhere.

Stopping (SIGTERM/SIGINT in `nodehost serve`, or `stop()`): stop admitting runs (503), let
running runs finish for up to `server.drain_seconds` (a second `stop()` cuts this short),
end every event stream, stop uvicorn (open connections get `server.stop_timeout_seconds`),
then cancel the scheduler and close the executors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import msgspec
import uvicorn
from anyio.abc import TaskStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import descendants, systemd
from .api import DaemonApi, daemon_host
from .auth import Authenticator
from .commands import Forget
from .config import Config, ConfigError, Listen
from .configfile import read_tokens, token_path
from .engine import utc_now
from .environments import Environments, add
from .errors import NodehostError
from .events import Envelope, RunStatusEvent
from .executors import landlock
from .executors.subprocess import SubprocessExecutor
from .host import Host
from .http import create_app, refusing
from .plugins import Catalog, Location
from .policy import Policy
from .recovery import RecoveryReport, Retention, runs_to_forget
from .store.continuity import HistoryIncomplete
from .store.journal import JournalCorrupt
from .store.store import Recovered, Store

__all__ = ["Daemon", "StartError", "bind_unix"]

log = logging.getLogger(__name__)

_FINAL = frozenset({"succeeded", "failed", "cancelled"})

MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the NUL
REAP_SECONDS = 5.0  # how often orphans of workers are looked for (see descendants)


class StartError(NodehostError):
    """The daemon cannot start (the socket is in use, a directory is unsafe, ...)."""


class DamagedState(StartError):
    """The state directory's history is incomplete or damaged: only the operator can say
    what to do (exit status 65, which the systemd unit does not restart on)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, refusing (403, every request) a connection on a Unix socket
    whose peer is one of the daemon's own descendants: a worker, or what a node started.
    Checked once, when the connection is made (a /proc walk: tens of microseconds)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return  # TCP needs a token, which no worker has
        pid, uid = descendants.peer(sock)
        me = os.getpid()
        if pid in (0, me) or not descendants.descends_from(pid, uid, me):
            return
        log.warning("refused an API connection from pid %d: one of the daemon's own processes",
                    pid)
        self.app = cast(Any, refusing(self.app, "the daemon does not serve its own processes: "
                                      "a node, or a program a node started, may not call the "
                                      "API"))


def bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0660, in a directory of mode 0750.

    The directory is created if missing; an existing one must not be writable by others
    nor owned by another user (but root). A stale socket file is replaced; one a live
    daemon answers on is not.
    """
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise StartError(f"socket path {path!r} is longer than {MAX_UNIX_PATH} bytes")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            os.chmod(directory, 0o750)
        except OSError as exc:
            raise StartError(f"cannot create socket directory {directory!r}: "
                             f"{exc.strerror}") from None
    info = os.stat(directory)
    if info.st_uid not in (os.getuid(), 0) or info.st_mode & stat.S_IWOTH:
        raise StartError(f"socket directory {directory!r} is writable by others or owned by "
                         f"uid {info.st_uid}; use a directory only this user controls")
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartError(f"{path!r} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens on it
        else:
            raise StartError(f"another daemon is listening on {path!r}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot bind {path!r}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _bind_tcp(listen: Listen) -> socket.socket:
    assert listen.host is not None and listen.port is not None
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        return socket.create_server((listen.host, listen.port), family=family, backlog=128)
    except OSError as exc:
        raise StartError(f"cannot listen on {listen}: {exc.strerror}") from None


class Daemon:
    """One nodehost daemon: open() it, run() it, stop() it."""

    def __init__(self, config: Config, catalog: Catalog, *,
                 sockets: list[socket.socket] | None = None,
                 accept_journal_loss: bool = False,
                 config_path: str | os.PathLike[str] | None = None) -> None:
        """`config_path`: the file `config` was read from, which workers may not read."""
        self.config = config
        self.config_path = config_path
        self.accept_journal_loss = accept_journal_loss
        self.catalog = catalog
        self.journal: Store | None = None  # in the state directory, opened by open()
        self._recovered: Recovered | None = None
        self._pidfile: str | None = None
        self.recovery: RecoveryReport | None = None
        self._given_sockets = sockets
        self._sockets: list[socket.socket] = []
        self._unix_path: str | None = None
        self._unix_inode: tuple[int, int] | None = None
        self.address = ""
        self.transport = "unix"
        self.authenticator: Authenticator | None = None
        self.api: DaemonApi | None = None
        self.host: Host | None = None
        self._stop = anyio.Event()
        self._drain_scope: anyio.CancelScope | None = None
        self._stops = 0
        self._retiring = True  # a package version may be being uninstalled: look
        self.orphans = descendants.OrphanReaper()

    # --- start-up ------------------------------------------------------------------------------

    def open(self) -> None:
        """Check tokens and listener settings, then bind; ConfigError / StartError if not."""
        config = self.config
        tokens = read_tokens(config.auth)
        self._check_landlock()
        sockets = (self._given_sockets if self._given_sockets is not None
                   else list(systemd.listen_sockets().values()))
        if sockets:
            families = {s.family for s in sockets}
            self.transport = "unix" if families == {socket.AF_UNIX} else "tcp"
            self.address = ", ".join(str(s.getsockname()) for s in sockets)
        else:
            listen = config.server.address()
            self.transport = listen.kind
            self.address = str(listen)
        if self.transport == "tcp" and not tokens:
            raise ConfigError(
                f"listening on TCP ({self.address}) requires bearer tokens: add [[auth.tokens]] "
                "to the config, or listen on a Unix socket")
        if self.transport == "unix" and config.auth.require_token_on_socket and not tokens:
            raise ConfigError("auth.require_token_on_socket is set but no [[auth.tokens]] "
                              "are configured")
        require = self.transport == "tcp" or config.auth.require_token_on_socket
        self.authenticator = Authenticator(tokens, require_token=require)
        state_dir = config.server.state_path()
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StartError(f"cannot create state directory {state_dir!r}: "
                             f"{exc.strerror}") from None
        if self.journal is None:
            self._open_journal(Path(state_dir))
        self._write_pidfile()
        if sockets:
            self._sockets = list(sockets)
            return
        listen = config.server.address()
        if listen.kind == "unix":
            assert listen.path is not None
            self._sockets = [bind_unix(listen.path)]
            info = os.stat(listen.path)
            self._unix_path, self._unix_inode = listen.path, (info.st_dev, info.st_ino)
        else:
            self._sockets = [_bind_tcp(listen)]
            host, port = self._sockets[0].getsockname()[:2]
            self.address = str(Listen("tcp", host=host, port=port))

    def _check_landlock(self) -> None:
        mode = self.config.sandbox.landlock
        if mode == "off" or landlock.abi():
            return
        if mode == "require":
            raise StartError('[sandbox] landlock = "require", but this kernel has no Landlock '
                             "(Linux 5.13+, with landlock in its lsm= list): not starting")
        log.warning("this kernel has no Landlock: subprocess workers run unconfined and can "
                    'read the daemon\'s state ([sandbox] landlock = "require" refuses to start '
                    'so; "off" says it is meant)')

    def _protected(self) -> list[str]:
        """What no worker may reach: the state directory (the journal, the work root), the
        runtime directory (socket, pid file), the config file, token files, credentials."""
        config = self.config
        paths = [config.server.state_path(), config.server.runtime_path()]
        if self.config_path is not None:
            paths.append(os.fspath(self.config_path))
        paths.extend(p for p in map(token_path, config.auth.tokens) if p is not None)
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            paths.append(os.environ["CREDENTIALS_DIRECTORY"])
        return [os.path.abspath(p) for p in paths]

    def _write_pidfile(self) -> None:
        """`<runtime_dir>/nodehost.pid`, for `nodehost reload` (removed at exit)."""
        runtime = self.config.server.runtime_path()
        try:
            os.makedirs(runtime, mode=0o750, exist_ok=True)
            path = os.path.join(runtime, "nodehost.pid")
            with open(path, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            log.warning("cannot write the pid file in %s: %s", runtime, exc.strerror)
            return
        self._pidfile = path

    def _open_journal(self, state_dir: Path) -> None:
        journal = Store(state_dir / "store", self.config.journal,
                        accept_loss=self.accept_journal_loss)
        try:
            self._recovered = journal.open()
        except (HistoryIncomplete, JournalCorrupt) as exc:
            raise DamagedState(str(exc)) from None
        except OSError as exc:
            raise StartError(f"cannot read the state in {state_dir}: {exc}") from None
        self.journal = journal

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until stop(); `task_status.started()` once requests are being answered."""
        if self.authenticator is None:
            self.open()
        assert self.authenticator is not None
        config = self.config
        journal = self.journal
        assert journal is not None
        host, api = self.host, self.api = daemon_host(config, self.catalog, journal,
                                                      protect=self._protected(),
                                                      observers=[self._observe])
        workers = host.executors["subprocess"]
        if isinstance(workers, SubprocessExecutor):
            self.orphans = descendants.OrphanReaper(keep=lambda: workers.pids)
        allowed = None
        if self.transport == "tcp":
            allowed = list(config.server.allowed_hosts)
            listen = config.server.address()
            if listen.host:
                allowed.append(listen.host)
        if self._recovered is not None:
            self.recovery = host.recover(self._recovered)
            self._recovered = None  # the commands are in the engine now
            api.restore(host.engine.runs.values())
        self._remove_unused()  # what is being uninstalled, and no recovered run uses
        app = create_app(api, authenticator=self.authenticator, allowed_hosts=allowed)
        server = _EmbeddedServer(uvicorn.Config(
            app, http=_Protocol, ws="none", lifespan="off", log_config=None,
            access_log=config.server.access_log, proxy_headers=False, server_header=False,
            timeout_graceful_shutdown=config.server.stop_timeout_seconds,  # type: ignore[arg-type]
        ))
        subreaper = self._become_subreaper()
        try:
            async with anyio.create_task_group() as keeper:
                try:
                    async with host.running(), anyio.create_task_group() as tg:
                        keeper.start_soon(self._maintain, journal, host, api)
                        if subreaper is not None:
                            keeper.start_soon(self._reap_orphans)
                        tg.start_soon(server.serve, self._sockets)
                        await server.ready.wait()
                        log.info("nodehost listening on %s (%s)", self.address,
                                 "bearer tokens required" if self.authenticator.require_token
                                 else "socket permissions; tokens optional")
                        systemd.notify(f"READY=1\nSTATUS={self._status(host)}")
                        keeper.start_soon(self._report_to_systemd, host)
                        task_status.started()
                        await self._stop.wait()
                        systemd.notify("STOPPING=1\nSTATUS=stopping: letting running nodes "
                                       "finish")
                        await self._drain(api, host)
                        api.close()  # ends the event streams
                        server.should_exit = True
                finally:
                    keeper.cancel_scope.cancel()
        finally:
            self._cleanup()
            journal.close()
            if subreaper is not None:
                descendants.set_subreaper(subreaper)
        log.info("nodehost stopped")

    def _become_subreaper(self) -> bool | None:
        """Orphans of workers become our children, so that the descendants check sees
        them (the previous setting, to restore; None if the kernel refused)."""
        try:
            return descendants.set_subreaper(True)
        except OSError as exc:
            log.warning("%s: a node's double fork escapes the check of API connections "
                        "from the daemon's own processes", exc)
            return None

    async def _reap_orphans(self) -> None:
        while True:
            await anyio.sleep(REAP_SECONDS)
            self.orphans.reap()

    def _status(self, host: Host) -> str:
        """The one-line summary systemctl status shows."""
        runs = host.engine.statistics()
        nodes = host.scheduler.statistics()
        return (f"{runs['runs_active'] - runs['runs_queued']} runs running, "
                f"{runs['runs_queued']} queued; {nodes['running']} nodes running")

    def _alive(self, host: Host) -> bool:
        """What the watchdog vouches for: the scheduler serves and the journal is not stuck."""
        if not host.scheduler.serving:
            return False
        journal = self.journal
        return journal is None or journal.stuck_for() < self.config.server.watchdog_stuck_seconds

    async def _report_to_systemd(self, host: Host) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC while alive, from this event loop (a wedged
        loop stops the pings, and systemd restarts us); STATUS= when it changes."""
        interval = systemd.watchdog_interval()
        period = min(interval, 5.0) if interval else 5.0
        last = ""
        while True:
            status = self._status(host)
            message = [] if status == last else [f"STATUS={status}"]
            last = status
            if interval and self._alive(host):
                message.append("WATCHDOG=1")
            elif interval:
                log.error("not sending the watchdog ping: the scheduler or the journal is stuck")
            if message:
                systemd.notify("\n".join(message))
            await anyio.sleep(period)

    async def _maintain(self, journal: Store, host: Host, api: DaemonApi) -> None:
        """Apply retention and write snapshots, so history and recovery time stay bounded."""
        cfg = self.config.retention
        retention = Retention(
            max_age=timedelta(days=cfg.max_age_days) if cfg.max_age_days else None,
            max_runs=cfg.max_runs,
        )
        engine = host.engine
        every = self.config.journal.snapshot_every_records
        while True:
            forget = Forget(run_ids=runs_to_forget(engine.runs.values(), retention, utc_now()))
            tenants = {run_id: engine.runs[run_id].tenant for run_id in forget.run_ids}
            if forget.run_ids and host.apply(forget):
                dropped = forget.run_ids  # those the engine dropped
                api.forget(dropped)
                for run_id in dropped:  # and their work directories
                    host.work_dirs.remove(tenants[run_id], run_id)
                log.info("retention: forgot %d finished run(s)", len(dropped))
            if journal.records_since_snapshot >= every or journal.snapshot_full:
                try:
                    await journal.compact()
                except OSError as exc:  # the journal is intact; a full disk is logged once
                    if not journal.snapshot_full:
                        log.error("snapshot not written (%s); the journal keeps the history, "
                                  "and the snapshot is tried again", exc)
            # while new runs wait for space for a snapshot, look again soon
            await anyio.sleep(min(cfg.check_interval_seconds, journal.full_retry_interval)
                              if journal.snapshot_full else cfg.check_interval_seconds)

    async def _drain(self, api: DaemonApi, host: Host) -> None:
        """Stop admitting runs and starting nodes; let running nodes finish for up to
        `server.drain_seconds`; stop the rest and queue them again (journaled), so they run
        after the restart. Reads and event streams go on meanwhile."""
        api.stop_admitting()
        scheduler = host.scheduler
        scheduler.pause()
        running = scheduler.statistics()["running"]
        seconds = self.config.server.drain_seconds
        if running and seconds > 0 and self._stops <= 1:
            log.info("waiting up to %g s for %d running node(s) to finish", seconds, running)
            with anyio.move_on_after(seconds) as scope:
                self._drain_scope = scope
                await scheduler.wait_idle()
            self._drain_scope = None
        stopped = scheduler.interrupt_running("the daemon stopped; the node runs again after "
                                              "the restart")
        if stopped:
            log.info("stopped %d running node(s); they will run again after the restart",
                     stopped)
        # events go out once their records are durable: let the last ones reach the
        # streams before they are closed (unless the disk is full or the journal stuck)
        journal = host.store
        if journal is not None:
            with anyio.move_on_after(self.config.server.stop_timeout_seconds):
                await journal.wait_durable(unless_full=True)

    def reload(self, config: Config) -> list[str]:
        """Apply what can change while running: scheduler limits, tokens, log level and
        retention. Returns the sections that differ but need a restart."""
        old = self.config
        host = self.host
        self.rescan_packages()
        if host is not None:
            host.scheduler.set_limits(config.scheduler)
            if config.policy != old.policy:  # new submissions only: runs admitted go on
                host.policy = Policy(config.policy)
        if self.authenticator is not None and config.auth != old.auth:
            self.authenticator.replace(read_tokens(config.auth))
        logging.getLogger().setLevel(config.server.log_level.upper())
        restart = [name for name in ("executors", "plugins", "documents", "journal", "events",
                                     "api", "sandbox")
                   if getattr(config, name) != getattr(old, name)]
        if (config.server.listen, config.server.state_dir, config.server.runtime_dir) != (
                old.server.listen, old.server.state_dir, old.server.runtime_dir):
            restart.append("server (listen, directories)")
        server = msgspec.structs.replace(old.server, log_level=config.server.log_level,
                                         drain_seconds=config.server.drain_seconds)
        self.config = msgspec.structs.replace(old, scheduler=config.scheduler, auth=config.auth,
                                              retention=config.retention, server=server,
                                              policy=config.policy)
        log.info("configuration reloaded%s", f"; needs a restart to change: {', '.join(restart)}"
                 if restart else "")
        return restart

    def rescan_packages(self) -> None:
        """Pick up package versions installed or uninstalled (`nodehost packages`) since
        start: new ones are offered to new runs; one being uninstalled to none, and removed
        once no run uses it (runs admitted already keep what they were compiled with)."""
        installed, problems = self._environments().scan()
        here = {str(env.path): env for env in installed}
        catalog = self.catalog
        for name, version in catalog.packages():
            location = catalog.location(name, version)
            if location is None or location.home is None:
                continue
            env = here.get(location.home)
            if env is None or env.retired:
                catalog.retire(name, version)
                log.info("package %s==%s is uninstalled: offered to no new run", name, version)
        known = {catalog.location(*key) for key in catalog.packages(retired=True)}
        for env in installed:
            if Location(python=str(env.python), home=str(env.path)) in known or env.retired:
                continue
            add(catalog, env, problems)
            for descriptor in env.packages:
                log.info("package %s==%s installed: offered to new runs", descriptor.name,
                         descriptor.version)
        for problem in problems:
            log.error("node packages: %s", problem)
        self._remove_unused()

    def _environments(self) -> Environments:
        return Environments(os.path.join(self.config.server.state_path(), "packages"))

    def _remove_unused(self) -> None:
        """Remove the environments being uninstalled that no unfinished run uses any more
        (and stop their workers)."""
        catalog, host = self.catalog, self.host
        retiring = {key: location.home for key in catalog.retired()
                    if (location := catalog.location(*key)) is not None
                    and location.home is not None}
        if not retiring:
            self._retiring = False
            return
        if host is not None:
            for run in host.engine.runs.values():
                if not run.final:
                    for key in run.graph.package_versions() & retiring.keys():
                        del retiring[key]
        environments = self._environments()
        workers = None if host is None else host.executors.get("subprocess")
        for (name, version), home in retiring.items():
            catalog.drop(name, version)
            if isinstance(workers, SubprocessExecutor):
                workers.stop_pools(name, version)
            if os.path.isdir(home):
                environments.remove(Path(home))
            log.info("package %s==%s removed (%s)", name, version, home)
        self._retiring = bool(catalog.retired())

    def _observe(self, envelope: Envelope) -> None:
        """A run that ends may have been the last to use a version being uninstalled."""
        data = envelope.data
        if self._retiring and isinstance(data, RunStatusEvent) and data.status in _FINAL:
            self._remove_unused()

    def stop(self) -> None:
        """Ask the daemon to stop; asked again, it stops waiting for runs to finish."""
        self._stops += 1
        self._stop.set()
        if self._stops > 1 and self._drain_scope is not None:
            self._drain_scope.cancel()

    def _cleanup(self) -> None:
        for sock in self._sockets:
            sock.close()
        if self._pidfile is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._pidfile)
            self._pidfile = None
        path = self._unix_path
        if path is not None and self._unix_inode is not None:
            with contextlib.suppress(OSError):
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == self._unix_inode:
                    os.unlink(path)
