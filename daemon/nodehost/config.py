"""The daemon's configuration: config.toml decoded into msgspec Structs (tier 5).

Every key has a default, so an empty file (or none) is a valid configuration. Unknown keys
are refused with their full name (`$.scheduler.paralelism`): a typo must not be ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .errors import NodehostError
from .scheduler import SchedulerLimits
from .validate import Limits

__all__ = ["Config", "ConfigError", "Listen", "load_config", "parse_listen"]

Positive = Annotated[int, Meta(ge=1)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=86_400)]
Tenant = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class _Section(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class SchedulerConfig(_Section):
    parallelism: Annotated[int, Meta(ge=1, le=10_000)] = 32
    per_package: dict[str, Positive] = {}
    default_per_package: Positive | None = None

    def limits(self) -> SchedulerLimits:
        return SchedulerLimits(
            parallelism=self.parallelism,
            per_package=dict(self.per_package),
            default_per_package=self.default_per_package,
        )


class PluginsConfig(_Section):
    allow: list[str] | None = None
    deny: list[str] = []


class DocumentsConfig(_Section):
    max_document_bytes: Positive = 16 * 1024 * 1024
    max_nodes: Positive = 200_000
    max_depth: Annotated[int, Meta(ge=1, le=64)] = 16

    def limits(self) -> Limits:
        return Limits(
            max_document_bytes=self.max_document_bytes,
            max_nodes=self.max_nodes,
            max_depth=self.max_depth,
        )


class ExecutorsConfig(_Section):
    default: Literal["inprocess", "subprocess"] = "subprocess"
    inprocess: list[str] = msgspec.field(default_factory=lambda: ["nodehost.std"])
    subprocess: list[str] = []
    idle_workers: Annotated[int, Meta(ge=0, le=64)] = 2
    memory_limit_mb: Positive | None = None

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


class ServerConfig(_Section):
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


class ApiConfig(_Section):
    max_body_bytes: Positive = 32 * 1024 * 1024
    idempotency_keys: Positive = 10_000
    idempotency_ttl_seconds: PositiveSeconds = 86_400.0


class EventsConfig(_Section):
    heartbeat_seconds: PositiveSeconds = 15.0
    replay_buffer: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    subscriber_buffer: Annotated[int, Meta(ge=1, le=1_000_000)] = 1_000
    write_timeout_seconds: PositiveSeconds = 30.0


class TokenConfig(_Section):
    tenant: Tenant
    token: Annotated[str, Meta(min_length=16)] | None = None
    token_file: str | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of `token` and `token_file`")
        if self.token is not None and not _TOKEN.match(self.token):
            raise ValueError("a token is printable ASCII without spaces")

    def read(self) -> str:
        """The token (from `token_file`: relative to $CREDENTIALS_DIRECTORY when set)."""
        if self.token is not None:
            return self.token
        assert self.token_file is not None
        path = self.token_file
        if not os.path.isabs(path) and os.environ.get("CREDENTIALS_DIRECTORY"):
            path = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], path)
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"tenant {self.tenant}: cannot read token_file {path!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        if len(token) < 16 or not _TOKEN.match(token):
            raise ConfigError(f"tenant {self.tenant}: the token in {path!r} must be at least 16 "
                              "printable ASCII characters without spaces")
        return token


_TOKEN = re.compile(r"^[\x21-\x7e]+$")


class AuthConfig(_Section):
    require_token_on_socket: bool = False
    tokens: list[TokenConfig] = []

    def read_tokens(self) -> dict[str, str]:
        """token -> tenant; a token given twice is an error."""
        out: dict[str, str] = {}
        for entry in self.tokens:
            token = entry.read()
            if token in out:
                raise ConfigError(f"the same token is configured for tenants {out[token]!r} "
                                  f"and {entry.tenant!r}")
            out[token] = entry.tenant
        return out


class ClientConfig(_Section):
    url: str | None = None
    token_file: str | None = None


class JournalConfig(_Section):
    fsync: Literal["always", "batch"] = "batch"
    batch_interval_ms: Annotated[float, Meta(ge=0, le=1_000)] = 2.0
    segment_mb: Annotated[int, Meta(ge=1, le=4_096)] = 64
    snapshot_every_records: Annotated[int, Meta(ge=100)] = 200_000


class RetentionConfig(_Section):
    max_age_days: Annotated[float, Meta(gt=0)] | None = 30.0
    max_runs: Positive | None = 10_000
    check_interval_seconds: PositiveSeconds = 60.0


class Config(_Section):
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    executors: ExecutorsConfig = msgspec.field(default_factory=ExecutorsConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    documents: DocumentsConfig = msgspec.field(default_factory=DocumentsConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    client: ClientConfig = msgspec.field(default_factory=ClientConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)


class ConfigError(NodehostError):
    """The configuration file cannot be read or does not fit."""


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read a config file; None (and no NODEHOST_CONFIG) gives the defaults."""
    if path is None:
        path = os.environ.get("NODEHOST_CONFIG") or None
    if path is None:
        return Config()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: not valid TOML: {exc}") from None
