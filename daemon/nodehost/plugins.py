"""Finding node packages: entry points, pluggy, and the catalog of node types (tier 2).

Entry points of the group `nodehost.packages` are loaded one at a time, so a broken plugin
(an import error, a hook that raises, a misspelt hook name, something that is not a
`Package`) is reported with its distribution name and version and the others still load.
Two plugins registering the same (package, version, node type) is a conflict nobody can
resolve at run time: that raises PluginLoadError naming both, and the host does not start.

An entry point may name a `Package` object, or a module/object with
`nodehost_register_packages` hook implementations.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .node_api import NodeSpec, Package

__all__ = ["ENTRY_POINT_GROUP", "Catalog", "LoadReport", "PluginHost", "version_key"]

ENTRY_POINT_GROUP = "nodehost.packages"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What happened to one plugin at start-up.

    `ok` is False when the plugin is broken (`error` says why); a plugin left out by the
    allow/deny lists is `ok` with a `skipped` reason and no packages.
    """

    plugin: str  # "<distribution>==<version>:<entry point>", or a name given to `add`
    ok: bool
    packages: tuple[str, ...] = ()  # "name==version" of each package it registered
    error: str | None = None
    skipped: str | None = None


class Catalog:
    """Node types by (package, version, type); the engine and the validator read it.

    Several plugins may contribute node types to one package version (each type once);
    the Package objects they registered are never changed.
    """

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str, str], NodeSpec] = {}
        self._spec_origins: dict[tuple[str, str, str], str] = {}
        self._packages: dict[tuple[str, str], list[tuple[Package, str]]] = {}

    def add(self, package: Package, origin: str = "<direct>") -> None:
        """Add a package's node types; a (package, version, type) seen before is an error.

        Adding the same Package object again (two entry points naming it) changes nothing.
        """
        key = (package.name, package.version)
        entries = self._packages.setdefault(key, [])
        if any(known is package for known, _ in entries):
            return
        clash = sorted(t for t in package.nodes if (*key, t) in self._specs)
        if clash:
            first = self._spec_origins[(*key, clash[0])]
            raise PluginLoadError(
                origin,
                f"package {package.name}=={package.version} node type(s) "
                f"{', '.join(map(repr, clash))} are already registered by {first}",
            )
        entries.append((package, origin))
        for spec in package.nodes.values():
            self._specs[spec.key] = spec
            self._spec_origins[spec.key] = origin

    def get(self, package: str, version: str, type: str) -> NodeSpec | None:
        return self._specs.get((package, version, type))

    def versions(self, package: str) -> list[str]:
        """Installed versions of a package, oldest first (1.9 before 1.10)."""
        return sorted((v for (name, v) in self._packages if name == package), key=version_key)

    def types(self, package: str, version: str) -> list[str]:
        """Node types of one package version, sorted."""
        return sorted(t for (name, v, t) in self._specs if (name, v) == (package, version))

    def specs(self, package: str, version: str) -> list[NodeSpec]:
        """The node types of one package version, sorted by type."""
        return [self._specs[(package, version, t)] for t in self.types(package, version)]

    def packages(self) -> list[tuple[str, str]]:
        """(name, version) of every installed package, by name, then oldest version first."""
        return sorted(self._packages, key=lambda k: (k[0], version_key(k[1])))

    def origin(self, package: str, version: str) -> str | None:
        """Where a package version came from (`dist==version:entry point`), or None.

        When several plugins contributed to it, their origins are joined by ", ".
        """
        entries = self._packages.get((package, version))
        return ", ".join(origin for _, origin in entries) if entries else None

    def description(self, package: str, version: str) -> str:
        """The first non-empty description among the Package objects of this version."""
        for pkg, _ in self._packages.get((package, version), ()):
            if pkg.description:
                return pkg.description
        return ""

    def describe(self) -> list[dict[str, Any]]:
        """Installed packages as published (`nodehost packages -o json`, `GET /packages`)."""
        return [
            {
                "name": name,
                "version": version,
                "origin": self.origin(name, version),
                "description": self.description(name, version),
                "nodes": [_describe_spec(spec) for spec in self.specs(name, version)],
            }
            for name, version in self.packages()
        ]

    def __len__(self) -> int:
        return len(self._specs)


def _describe_spec(spec: NodeSpec) -> dict[str, Any]:
    return {
        "type": spec.type,
        "description": spec.description,
        "timeout": spec.timeout,
        "retry": spec.retry,
        "idempotent": spec.idempotent,
        "privileged": spec.privileged,
        "parametersSchema": spec.parameters_schema(),
        "resultsSchema": spec.results_schema(),
    }


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
        found = self._collect(obj, name)
        return self._register(found, name)

    def _collect(self, obj: object, name: str) -> list[Package]:
        """The packages a plugin provides; PluginLoadError if the plugin is broken."""
        if isinstance(obj, Package):
            return [obj]
        impls = {attr: opts for attr in dir(obj)
                 if (opts := self.pm.parse_hookimpl_opts(obj, attr)) is not None}
        if not impls:
            raise PluginLoadError(name, _nothing_provided(obj))
        known = [n for n in dir(self.pm.hook) if n.startswith(hookspecs.PROJECT)]
        for attr, opts in sorted(impls.items()):
            hook = opts.get("specname") or attr
            if hook not in known and not opts.get("optionalhook"):
                close = difflib.get_close_matches(hook, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known hooks: {known}"
                raise PluginLoadError(name, f"{hook!r} is not a nodehost hook ({hint})")
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:  # pluggy: a name or object registered twice, bad arguments
            raise PluginLoadError(name, _pluggy_message(exc)) from exc
        found: list[Any] = []
        try:
            self.pm.check_pending()  # as tox does; the names were checked above
            kwargs = {"register": found.append}
            for impl in self.pm.hook.nodehost_register_packages.get_hookimpls():
                if impl.plugin is obj:  # only the new plugin: earlier ones ran already
                    impl.function(**{k: kwargs[k] for k in impl.argnames})
            for package in found:
                if not isinstance(package, Package):
                    raise TypeError(f"it registered {package!r} (a {type(package).__name__}),"
                                    " which is not a nodehost.Package")
        except Exception as exc:
            self.pm.unregister(obj)
            raise PluginLoadError(name, _pluggy_message(exc)) from exc
        return found

    def _register(self, found: list[Package], name: str) -> LoadReport:
        """Add what a plugin provides to the catalog; PluginLoadError on a conflict."""
        for package in found:
            self.catalog.add(package, origin=name)
        report = LoadReport(name, True, tuple(f"{p.name}=={p.version}" for p in found))
        self.reports.append(report)
        return report

    def _broken(self, name: str, error: str) -> LoadReport:
        report = LoadReport(name, False, error=error)
        log.error("plugin %s not loaded: %s", name, error)
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

        `allow` (only these) and `deny` (not these) filter by distribution name, compared
        as normalised names (`Acme_Vision` is `acme-vision`). A broken plugin is reported,
        not raised; a registration that conflicts with an earlier one raises
        PluginLoadError, naming both plugins.
        """
        allowed = None if allow is None else {_norm(a): a for a in allow}
        denied = {_norm(d) for d in deny}
        reports: list[LoadReport] = []
        seen: dict[str, tuple[str, str]] = {}  # normalised name: (label, where it is)
        for dist in importlib.metadata.distributions():
            dist_name = (dist.metadata.get_all("Name") or ["?"])[0]
            norm = _norm(dist_name)
            eps = sorted((ep for ep in dist.entry_points if ep.group == group),
                         key=lambda ep: ep.name)
            if not eps:
                continue
            label = f"{dist_name}=={dist.version}"
            where = str(dist.locate_file(""))
            if norm in seen:
                first, first_where = seen[norm]
                if first != label:  # another version (the same one twice is, in practice,
                    # one install seen through its build metadata too, as egg-info beside
                    # an editable's source): only the first copy on sys.path can be
                    # imported, so say so rather than lose the other version silently
                    reports.append(self._broken(
                        f"{label} ({where})",
                        f"shadowed by {first} ({first_where}), found first on sys.path: one "
                        "interpreter imports only one copy of a distribution; uninstall one "
                        "of them"))
                continue
            seen[norm] = (label, where)
            if norm in denied or (allowed is not None and norm not in allowed):
                why = ("denied by [plugins] deny" if norm in denied
                       else "not in [plugins] allow")
                log.info("plugin %s skipped: %s", label, why)
                report = LoadReport(label, True, skipped=why)
                self.reports.append(report)
                reports.append(report)
                continue
            for ep in eps:
                name = f"{label}:{ep.name}"
                try:
                    found = self._collect(ep.load(), name)
                except PluginLoadError as exc:
                    reports.append(self._broken(name, exc.message))
                    continue
                except Exception as exc:
                    reports.append(self._broken(name, f"{type(exc).__name__}: {exc}"))
                    continue
                reports.append(self._register(found, name))
        for missing in sorted(set(allowed or {}) - set(seen)):
            assert allowed is not None
            reports.append(self._broken(
                allowed[missing],
                f"named in [plugins] allow, but no installed distribution of that name has "
                f"{group!r} entry points",
            ))
        return reports


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for version strings, close to PEP 440 without depending on `packaging`.

    Numbers compare as numbers (1.9 < 1.10); a pre-release comes before its release and a
    post-release after it (1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1).
    """
    key = []
    for part in re.findall(r"\d+|[a-z]+", version.lower()):
        if part.isdigit():
            key.append((2, int(part), ""))
        elif part in ("post", "rev", "r"):
            key.append((1, 0, part))
        else:
            key.append((-2 if part == "dev" else -1, 0, part))
    key.append((0, 0, ""))  # the end of the release: below more numbers, above pre-releases
    return tuple(key)


def _norm(name: str) -> str:
    """A distribution name normalised as PyPA does (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _nothing_provided(obj: object) -> str:
    what = f"module {getattr(obj, '__name__', '?')}" if hasattr(obj, "__file__") else repr(obj)
    hint = ""
    packages = [k for k, v in vars(obj).items() if isinstance(v, Package)] \
        if hasattr(obj, "__dict__") else []
    if packages:
        hint = f" (did the entry point mean '{getattr(obj, '__name__', '?')}:{packages[0]}'?)"
    return (f"{what} is neither a nodehost.Package nor has any nodehost hook "
            f"implementations{hint}")


def _pluggy_message(exc: Exception) -> str:
    if isinstance(exc, pluggy.PluginValidationError):
        return str(exc)  # pluggy's own text names the hook and what is wrong with it
    return f"{type(exc).__name__}: {exc}"
