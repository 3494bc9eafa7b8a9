"""The daemon's configuration as msgspec Structs: one section per component (tier 1, no I/O).

Every key has a default, written here and nowhere else: each component takes its section
(`Scheduler(engine, config.scheduler)`, `EventBus(config.events)`, ...), so a component built
without a config has exactly the defaults config.toml documents. Unknown keys are refused
with their full name (`$.scheduler.paralelism`): a typo must not be ignored. Sections are
frozen; a reload builds a new Config. Reading the file is `configfile.load_config`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .errors import NodehostError

__all__ = [
    "TOKEN_PATTERN",
    "ApiConfig",
    "AuthConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "DocumentsConfig",
    "EventsConfig",
    "ExecutorsConfig",
    "JournalConfig",
    "Listen",
    "OutputsConfig",
    "PluginsConfig",
    "PolicyConfig",
    "PolicyRules",
    "RetentionConfig",
    "Sandbox",
    "SchedulerConfig",
    "ServerConfig",
    "TokenConfig",
    "parse_listen",
]

Positive = Annotated[int, Meta(ge=1)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=86_400)]
Tenant = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
TOKEN_PATTERN = re.compile(r"^[\x21-\x7e]+$")  # a bearer token: printable ASCII, no spaces


class _Section(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True,
               frozen=True):
    pass


class SchedulerConfig(_Section, frozen=True):
    """How many attempts may run at once: in all, per package (by name), per package default."""

    parallelism: Annotated[int, Meta(ge=1, le=10_000)] = 32
    per_package: dict[str, Positive] = {}
    default_per_package: Positive | None = None
    # after a burst of events the daemon's event loop looks again this long (us) before it
    # sleeps: an answer from a worker or from the journal's writer is taken without the
    # machine's wake-up latency (CPU: at most this much per burst); 0 = sleep at once
    loop_poll_us: Annotated[int, Meta(ge=0, le=100_000)] = 300

    def for_package(self, name: str) -> int | None:
        return self.per_package.get(name, self.default_per_package)


class PluginsConfig(_Section, frozen=True):
    allow: list[str] | None = None
    deny: list[str] = []


class DocumentsConfig(_Section, frozen=True):
    """What a workflow document may be (`validate.Limits` is this section)."""

    max_document_bytes: Positive = 16 * 1024 * 1024
    max_nodes: Positive = 200_000  # all nodes at every depth, counted once per container use
    max_depth: Annotated[int, Meta(ge=1, le=64)] = 16  # container nesting


class ExecutorsConfig(_Section, frozen=True):
    default: Literal["inprocess", "subprocess"] = "subprocess"
    inprocess: list[str] = msgspec.field(default_factory=lambda: ["nodehost.std"])
    subprocess: list[str] = []
    idle_workers: Annotated[int, Meta(ge=0, le=64)] = 2
    # an idle worker beyond idle_workers is stopped after this long without an attempt
    idle_seconds: Annotated[float, Meta(ge=0, le=86_400)] = 30.0
    # attempts of async nodes one worker runs at once (its event loop shares them); sync
    # nodes take a worker each. By package name, for CPU-bound async packages (1).
    concurrency: Annotated[int, Meta(ge=1, le=1024)] = 16
    per_package_concurrency: dict[str, Annotated[int, Meta(ge=1, le=1024)]] = {}
    # address-space limit of each worker, MiB: a runaway node fails alone instead of
    # pushing the machine into swap; 0 = no limit (for runtimes that map huge areas)
    memory_limit_mb: Annotated[int, Meta(ge=0)] = 2048
    kill_grace_seconds: Annotated[float, Meta(ge=0, le=600)] = 1.0
    # after a burst of frames a worker keeps looking for the next one this long (us) before
    # it sleeps: a chain of nodes does not pay the machine's wake-up latency per attempt
    # (CPU: at most this much per burst); 0 = sleep at once
    worker_poll_us: Annotated[int, Meta(ge=0, le=100_000)] = 300
    # a sync node type run in-process whose attempts in threads keep within this (us) runs
    # on the event loop instead (no thread hop); 0 = always in a thread
    inline_sync_us: Annotated[int, Meta(ge=0, le=10_000)] = 100

    def concurrency_for(self, package: str) -> int:
        return self.per_package_concurrency.get(package, self.concurrency)

    def kind_for(self, package: str) -> Literal["inprocess", "subprocess"]:
        if package in self.subprocess:
            return "subprocess"
        if package in self.inprocess:
            return "inprocess"
        return self.default


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the API listens: a Unix socket `path`, or TCP `host`:`port`."""

    kind: Literal["unix", "tcp"]
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_listen(value: str, runtime_dir: str) -> Listen:
    """`unix:` (the default socket in the runtime directory), `unix:PATH` or `tcp://HOST:PORT`."""
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        return Listen("unix", path=path or os.path.join(runtime_dir, "nodehost.sock"))
    if value.startswith("tcp://"):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"listen {value!r}: expected tcp://HOST:PORT")
        return Listen("tcp", host=parts.hostname, port=port)
    raise ValueError(f"listen {value!r}: expected 'unix:', 'unix:PATH' or 'tcp://HOST:PORT'")


def _default_runtime_dir() -> str:
    """systemd's RuntimeDirectory, else $XDG_RUNTIME_DIR/nodehost, else a per-user /tmp dir."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "nodehost")
    return f"/tmp/nodehost-{os.getuid()}"


def _default_state_dir() -> str:
    """systemd's StateDirectory, else $XDG_STATE_HOME/nodehost (~/.local/state/nodehost)."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return os.path.join(base, "nodehost")


class ServerConfig(_Section, frozen=True):
    listen: str = "unix:"
    runtime_dir: str | None = None
    state_dir: str | None = None
    allowed_hosts: list[str] = msgspec.field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    drain_seconds: Annotated[float, Meta(ge=0, le=86_400)] = 10.0
    stop_timeout_seconds: PositiveSeconds = 3.0
    access_log: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    watchdog_stuck_seconds: PositiveSeconds = 20.0

    def __post_init__(self) -> None:
        self.address()  # a bad listen string fails at load time, at `$.server`

    def runtime_path(self) -> str:
        return self.runtime_dir or _default_runtime_dir()

    def state_path(self) -> str:
        return self.state_dir or _default_state_dir()

    def address(self) -> Listen:
        return parse_listen(self.listen, self.runtime_path())


class OutputsConfig(_Section, frozen=True):
    """What one attempt may produce: checked before it is accepted (and journaled)."""

    max_result_bytes: Annotated[int, Meta(ge=1, le=48 * 1024 * 1024)] = 16 * 1024 * 1024
    max_partial_bytes: Annotated[int, Meta(ge=1, le=48 * 1024 * 1024)] = 1024 * 1024
    max_log_bytes: Positive = 4 * 1024 * 1024  # of chunks (log lines, stdout...), per attempt


class ApiConfig(_Section, frozen=True):
    max_body_bytes: Positive = 32 * 1024 * 1024
    idempotency_keys: Positive = 10_000
    idempotency_ttl_seconds: PositiveSeconds = 86_400.0


class EventsConfig(_Section, frozen=True):
    heartbeat_seconds: PositiveSeconds = 15.0
    replay_buffer: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    subscriber_buffer: Annotated[int, Meta(ge=1, le=1_000_000)] = 1_000
    write_timeout_seconds: PositiveSeconds = 30.0


class TokenConfig(_Section, frozen=True):
    tenant: Tenant
    token: Annotated[str, Meta(min_length=16)] | None = None
    token_file: str | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of `token` and `token_file`")
        if self.token is not None and not TOKEN_PATTERN.match(self.token):
            raise ValueError("a token is printable ASCII without spaces")


class AuthConfig(_Section, frozen=True):
    require_token_on_socket: bool = False
    tokens: list[TokenConfig] = []


class ClientConfig(_Section, frozen=True):
    url: str | None = None
    token_file: str | None = None


class JournalConfig(_Section, frozen=True):
    fsync: Literal["always", "batch"] = "batch"
    batch_interval_ms: Annotated[float, Meta(ge=0, le=1_000)] = 2.0
    segment_mb: Annotated[int, Meta(ge=1, le=4_096)] = 64
    snapshot_every_records: Annotated[int, Meta(ge=100)] = 200_000


class RetentionConfig(_Section, frozen=True):
    max_age_days: Annotated[float, Meta(gt=0)] | None = 30.0
    max_runs: Positive | None = 10_000
    check_interval_seconds: PositiveSeconds = 60.0


class Sandbox(_Section, frozen=True):
    """What nodes may reach beyond their run's work directory (`[sandbox]`). Every node gets
    it as `ctx.sandbox`; nodehost.std holds its nodes to it, and subprocess workers are
    confined to it by Landlock."""

    # directories file nodes may read and write, besides the run's own work directory
    file_roots: list[str] = []
    # programs nodehost.std.command may run (absolute paths), once the policy allows it
    command_executables: list[str] = []
    # the whole environment of such a program (nothing is inherited from the daemon)
    command_env: dict[str, str] = {}
    # destinations http.request may reach although they are loopback, private, link-local
    # or multicast: addresses, networks (CIDR) or host names
    http_allow: list[str] = []
    # where each run's work directory is made (absent = <state_dir>/work)
    work_dir: str | None = None
    # Landlock for subprocess workers: "auto" (when the kernel has it), "require" (refuse to
    # start without it) or "off"
    landlock: Literal["auto", "require", "off"] = "auto"

    def __post_init__(self) -> None:
        for key, paths in (("file_roots", self.file_roots),
                           ("command_executables", self.command_executables)):
            for i, path in enumerate(paths):
                if not os.path.isabs(path):
                    raise ValueError(f"{key}[{i}]: {path!r} must be an absolute path")
        if self.work_dir is not None and not os.path.isabs(self.work_dir):
            raise ValueError(f"work_dir: {self.work_dir!r} must be an absolute path")
        for i, entry in enumerate(self.http_allow):
            problem = _destination_problem(entry)
            if problem:
                raise ValueError(f"http_allow[{i}]: {entry!r} {problem}")


_HOST_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                        r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")


def _destination_problem(entry: str) -> str | None:
    """Why an http_allow entry is neither an address, a network nor a host name."""
    try:
        if "/" in entry:
            ipaddress.ip_network(entry, strict=False)
        elif ":" in entry or entry.replace(".", "").isdigit():
            ipaddress.ip_address(entry)
        elif not _HOST_NAME.match(entry):
            return "is not an address, a network (CIDR) or a host name"
    except ValueError as exc:
        return f"is not a valid address or network: {exc}"
    return None


NodeTypeGlob = Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.*?\[\]-]+$")]


class PolicyRules(_Section, frozen=True):
    """Which node types a workflow may use: `allow` and `deny` are globs over node types
    (deny wins); a node type its package marks host-privileged also needs a `privileged`
    glob that matches it."""

    allow: list[NodeTypeGlob] = msgspec.field(default_factory=lambda: ["*"])
    deny: list[NodeTypeGlob] = []
    privileged: list[NodeTypeGlob] = []


class PolicyConfig(PolicyRules, frozen=True):
    """`[policy]`: the rules for every tenant; `[policy.tenants.<name>]` narrows them for
    one tenant (a node type must pass both)."""

    tenants: dict[Tenant, PolicyRules] = {}


class Config(_Section, frozen=True):
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    executors: ExecutorsConfig = msgspec.field(default_factory=ExecutorsConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    documents: DocumentsConfig = msgspec.field(default_factory=DocumentsConfig)
    outputs: OutputsConfig = msgspec.field(default_factory=OutputsConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    client: ClientConfig = msgspec.field(default_factory=ClientConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    sandbox: Sandbox = msgspec.field(default_factory=Sandbox)


class ConfigError(NodehostError):
    """The configuration file cannot be read or does not fit."""
