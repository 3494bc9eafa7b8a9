"""Hosts for the tests, composed by `build_host` as the daemon composes its own.

Test packages run in-process unless a test asks for the subprocess executor; the other
settings are the defaults of config.toml unless given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from nodehost.config import Config, ExecutorsConfig, SchedulerConfig
from nodehost.events import Envelope
from nodehost.host import Host, build_host
from nodehost.plugins import Catalog
from nodehost.store.store import Store


def local_host(catalog: Catalog, *, executor: str = "inprocess",
               observers: Iterable[Callable[[Envelope], None]] = (),
               executors: dict[str, Any] | None = None, store: Store | None = None,
               **scheduler: Any) -> Host:
    """A host over `catalog`, every package on `executor`; `scheduler` are [scheduler] keys
    (parallelism=, per_package=), `executors` other [executors] keys (idle_workers=...);
    journaled in `store` (opened) if given."""
    config = Config(
        scheduler=SchedulerConfig(**scheduler),
        executors=ExecutorsConfig(default=executor, inprocess=[], subprocess=[],  # type: ignore[arg-type]
                                  **(executors or {})),
    )
    return build_host(config, catalog, store=store, observers=observers)
