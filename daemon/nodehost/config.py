"""The daemon's configuration: config.toml decoded into msgspec Structs (tier 5).

Every key has a default, so an empty file (or none) is a valid configuration. Unknown keys
are refused with their full name (`$.scheduler.paralelism`): a typo must not be ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .errors import NodehostError
from .scheduler import SchedulerLimits
from .validate import Limits

__all__ = ["Config", "ConfigError", "load_config"]

Positive = Annotated[int, Meta(ge=1)]


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


class Config(_Section):
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    executors: ExecutorsConfig = msgspec.field(default_factory=ExecutorsConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    documents: DocumentsConfig = msgspec.field(default_factory=DocumentsConfig)


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
