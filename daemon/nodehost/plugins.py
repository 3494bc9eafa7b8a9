"""Finding node packages: entry points, pluggy, and the catalog of node types (tier 2).

Entry points of the group `nodehost.packages` are loaded one at a time, so a broken plugin is
reported with its distribution name and version and the others still load. An entry point
may name a `Package` object, or a module/object with `nodehost_register_packages` hooks.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .node_api import NodeSpec, Package

__all__ = ["ENTRY_POINT_GROUP", "Catalog", "LoadReport", "PluginHost"]

ENTRY_POINT_GROUP = "nodehost.packages"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What happened to one plugin at start-up."""

    plugin: str  # "<distribution>==<version>:<entry point>" or a given name
    ok: bool
    packages: tuple[str, ...] = ()  # "name==version" of each package it registered
    error: str | None = None


class Catalog:
    """Node types by (package, version, type); the engine and the validator read it."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str, str], NodeSpec] = {}
        self._packages: dict[tuple[str, str], Package] = {}
        self._origins: dict[tuple[str, str], str] = {}

    def add(self, package: Package, origin: str = "<direct>") -> None:
        """Add a package's node types; a (package, version, type) seen before is an error."""
        key = (package.name, package.version)
        if key in self._packages and self._packages[key] is not package:
            clash = sorted(set(self._packages[key].nodes) & set(package.nodes))
            if clash:
                raise PluginLoadError(
                    origin,
                    f"package {package.name}=={package.version} node type(s) {clash} are "
                    f"already registered by {self._origins[key]}",
                )
            merged = self._packages[key]
            merged.nodes.update(package.nodes)
        else:
            self._packages[key] = package
            self._origins[key] = origin
        for spec in package.nodes.values():
            self._specs[spec.key] = spec

    def get(self, package: str, version: str, type: str) -> NodeSpec | None:
        return self._specs.get((package, version, type))

    def versions(self, package: str) -> list[str]:
        """Installed versions of a package, sorted."""
        return sorted(v for (name, v) in self._packages if name == package)

    def types(self, package: str, version: str) -> list[str]:
        pkg = self._packages.get((package, version))
        return sorted(pkg.nodes) if pkg else []

    def packages(self) -> list[Package]:
        return [self._packages[k] for k in sorted(self._packages)]

    def origin(self, package: str, version: str) -> str | None:
        return self._origins.get((package, version))

    def __len__(self) -> int:
        return len(self._specs)


class PluginHost:
    """One pluggy PluginManager per host instance, and the catalog it fills."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.catalog = Catalog()
        self.reports: list[LoadReport] = []

    def add(self, obj: object, name: str | None = None) -> LoadReport:
        """Register a Package or a hook-implementing object; errors raise PluginLoadError."""
        name = name or getattr(obj, "__name__", None) or repr(obj)
        found: list[Package] = []
        if isinstance(obj, Package):
            found.append(obj)
        else:
            try:
                self.pm.register(obj, name=name)
            except ValueError as exc:  # pluggy: duplicate name or unknown hook
                raise PluginLoadError(name, str(exc)) from exc
            try:
                self.pm.check_pending()  # a misspelt hook name fails here, like tox
                kwargs = {"register": found.append}
                for impl in self.pm.hook.nodehost_register_packages.get_hookimpls():
                    if impl.plugin is obj:  # only the new plugin: earlier ones ran already
                        impl.function(**{k: kwargs[k] for k in impl.argnames})
            except PluginLoadError:
                raise
            except Exception as exc:
                self.pm.unregister(obj)
                raise PluginLoadError(name, f"{type(exc).__name__}: {exc}") from exc
        for package in found:
            if not isinstance(package, Package):
                raise PluginLoadError(name, f"registered {package!r}, which is not a Package")
            self.catalog.add(package, origin=name)
        report = LoadReport(name, True, tuple(f"{p.name}=={p.version}" for p in found))
        self.reports.append(report)
        return report

    def load_entry_points(
        self,
        group: str = ENTRY_POINT_GROUP,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
    ) -> list[LoadReport]:
        """Load every entry point of `group`, one at a time; return one report per plugin.

        `allow`/`deny` filter by distribution name. Broken plugins are reported, not raised;
        a registration that conflicts with an earlier one raises PluginLoadError.
        """
        allowed = None if allow is None else {_norm(a) for a in allow}
        denied = {_norm(d) for d in deny}
        reports: list[LoadReport] = []
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            dist_name = dist.metadata["Name"] or "?"
            if _norm(dist_name) in seen:
                continue  # the same distribution found twice on sys.path: first wins
            eps = [ep for ep in dist.entry_points if ep.group == group]
            if not eps:
                continue
            seen.add(_norm(dist_name))
            if (allowed is not None and _norm(dist_name) not in allowed) or _norm(
                dist_name
            ) in denied:
                log.info("plugin %s skipped by the allow/deny list", dist_name)
                continue
            for ep in eps:
                label = f"{dist_name}=={dist.version}:{ep.name}"
                try:
                    obj = ep.load()
                except Exception as exc:
                    report = LoadReport(label, False, error=f"{type(exc).__name__}: {exc}")
                    log.error("plugin %s failed to load: %s", label, report.error)
                    self.reports.append(report)
                    reports.append(report)
                    continue
                reports.append(self.add(obj, name=label))
        return reports


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
