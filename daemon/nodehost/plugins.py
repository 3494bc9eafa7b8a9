"""Finding node packages: entry points, pluggy, and the catalog of node types (tier 2).

Entry points of the group `nodehost.packages` are loaded one at a time, so a broken plugin
(an import error, a hook that raises, a misspelt hook name, something that is not a
`Package`) is reported with its distribution name and version and the others still load.
Two providers of the same (package, version), or two distributions whose entry points load
one module, are a conflict nobody can resolve at run time: that raises PluginLoadError
naming both, and the host does not start (a version lost silently is worse).

An entry point may name a `Package` object, or a module/object with
`nodehost_register_packages` hook implementations.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .descriptors import NodeType, PackageDescriptor, describe_spec
from .errors import PluginLoadError
from .node_api import NodeSpec, Package

__all__ = ["ENTRY_POINT_GROUP", "HERE", "Catalog", "LoadReport", "Location", "PluginHost",
           "version_key"]

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


@dataclass(frozen=True, slots=True)
class Location:
    """Where the code of a package version lives: the daemon's own interpreter (`python` is
    None), or an environment of its own, run with that environment's interpreter."""

    python: str | None = None
    home: str | None = None  # the environment's directory


HERE = Location()


@dataclass(slots=True)
class _Provided:
    origin: str
    description: str
    distribution: str
    location: Location
    retired: bool = False  # uninstalled: kept for the runs that use it, offered to no new one
    packages: list[Package] = field(default_factory=list)


class Catalog:
    """Node types by (package, version, type), as data (`NodeType`); the validator, the
    engine and the API read it, and executors find where each package version's code is.

    A package version has one provider: a second one, for the same version or the same node
    type, is refused naming both (one would be lost silently otherwise). Packages of this
    interpreter also have their code here (`code`); those of an environment only their
    descriptors: the daemon never imports them.
    """

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], NodeType] = {}
        self._code: dict[tuple[str, str, str], NodeSpec] = {}
        self._provided: dict[tuple[str, str], _Provided] = {}
        self.generation = 0  # bumped by every change (what admission compiled is stale)

    def add(self, package: Package, origin: str = "<direct>", *, distribution: str = "") -> None:
        """Add a package of this interpreter; a second provider of its version is an error.

        Adding the same Package object again from the same origin changes nothing.
        """
        key = (package.name, package.version)
        known = self._provided.get(key)
        if known is not None and not known.retired:
            if any(p is package for p in known.packages):
                if known.origin == origin or (distribution and
                                              known.distribution == distribution):
                    return  # one distribution naming one object twice
                raise PluginLoadError(origin, _same_object(package, known.origin))
            raise PluginLoadError(origin, f"package {package.name}=={package.version} is "
                                          f"already provided by {known.origin}")
        self._check_types(key, package.nodes, origin)
        self._provided[key] = _Provided(origin, package.description, distribution, HERE,
                                        packages=[package])
        for spec in package.nodes.values():
            self._types[spec.key] = describe_spec(spec)
            self._code[spec.key] = spec
        self.generation += 1

    def add_descriptor(self, descriptor: PackageDescriptor, origin: str,
                       location: Location) -> None:
        """Add a package version that lives in an environment, known by its descriptor."""
        key = (descriptor.name, descriptor.version)
        known = self._provided.get(key)
        if known is not None and not (known.retired and known.location == location):
            raise PluginLoadError(origin, f"package {descriptor.name}=={descriptor.version} "
                                          f"is already provided by {known.origin}")
        types = {t.type: t for t in descriptor.nodes}
        self._check_types(key, types, origin)
        self._provided[key] = _Provided(origin, descriptor.description,
                                        descriptor.distribution, location)
        for node_type in descriptor.nodes:
            self._types[node_type.key] = node_type
        self.generation += 1

    def _check_types(self, key: tuple[str, str], types: Iterable[str], origin: str) -> None:
        clash = sorted(t for t in types if (*key, t) in self._types)
        if clash:  # left by a retired provider of another location: still in use
            raise PluginLoadError(origin, f"package {key[0]}=={key[1]} node type(s) "
                                          f"{', '.join(map(repr, clash))} are already "
                                          f"provided by {self._provided[key].origin}")

    def retire(self, package: str, version: str) -> None:
        """Offer a package version to no new run; runs admitted already keep it."""
        provided = self._provided.get((package, version))
        if provided is not None and not provided.retired:
            provided.retired = True
            self.generation += 1

    def drop(self, package: str, version: str) -> None:
        """Forget a package version (once no unfinished run uses it)."""
        if self._provided.pop((package, version), None) is None:
            return
        for key in [k for k in self._types if k[:2] == (package, version)]:
            del self._types[key]
            self._code.pop(key, None)
        self.generation += 1

    def get(self, package: str, version: str, type: str, *,
            retired: bool = False) -> NodeType | None:
        """The node type, or None; a retired version only with `retired`."""
        found = self._types.get((package, version, type))
        if found is None or retired:
            return found
        return None if self._provided[(package, version)].retired else found

    def code(self, key: tuple[str, str, str]) -> NodeSpec | None:
        """The function of a node type of this interpreter (None for an environment's)."""
        return self._code.get(key)

    def package_objects(self, package: str, version: str) -> list[Package]:
        """The Package objects of a version of this interpreter (none for an environment's)."""
        provided = self._provided.get((package, version))
        return [] if provided is None else list(provided.packages)

    def location(self, package: str, version: str) -> Location | None:
        provided = self._provided.get((package, version))
        return None if provided is None else provided.location

    def versions(self, package: str) -> list[str]:
        """Offered versions of a package, oldest first (1.9 before 1.10)."""
        return sorted((v for (name, v), p in self._provided.items()
                       if name == package and not p.retired), key=version_key)

    def types(self, package: str, version: str) -> list[str]:
        """Node types of one package version, sorted."""
        return sorted(t for (name, v, t) in self._types if (name, v) == (package, version))

    def specs(self, package: str, version: str) -> list[NodeType]:
        """The node types of one package version, sorted by type."""
        return [self._types[(package, version, t)] for t in self.types(package, version)]

    def packages(self, *, retired: bool = False) -> list[tuple[str, str]]:
        """(name, version) of every package, by name, then oldest version first."""
        return sorted((k for k, p in self._provided.items() if retired or not p.retired),
                      key=lambda k: (k[0], version_key(k[1])))

    def retired(self) -> list[tuple[str, str]]:
        return sorted(k for k, p in self._provided.items() if p.retired)

    def origin(self, package: str, version: str) -> str | None:
        """Who provides a package version (`dist==version:entry point`, or an environment)."""
        provided = self._provided.get((package, version))
        return None if provided is None else provided.origin

    def description(self, package: str, version: str) -> str:
        provided = self._provided.get((package, version))
        return "" if provided is None else provided.description

    def describe(self) -> list[dict[str, Any]]:
        """Offered packages as published (`nodehost packages -o json`, `GET /packages`)."""
        return [
            {
                "name": name,
                "version": version,
                "origin": self.origin(name, version),
                "description": self.description(name, version),
                "environment": self._provided[(name, version)].location.home,
                "nodes": [_describe_type(t) for t in self.specs(name, version)],
            }
            for name, version in self.packages()
        ]

    def __len__(self) -> int:
        return len(self._types)


def _same_object(package: Package, first: str) -> str:
    """Two distributions whose entry points load one module: only one of them is here."""
    spec = next(iter(package.nodes.values()), None)
    module = spec.fn.__module__ if spec is not None else "?"
    where = getattr(sys.modules.get(module), "__file__", None) or "?"
    return (f"it loads the very package object {first} registered ({package.name}=="
            f"{package.version}, module {module} from {where}): two distributions share "
            "that import name, and one interpreter imports only one of them; install each "
            "version in its own environment (`nodehost packages install`)")


def _describe_type(node_type: NodeType) -> dict[str, Any]:
    return {
        "type": node_type.type,
        "description": node_type.description,
        "timeout": node_type.timeout,
        "retry": node_type.retry,
        "idempotent": node_type.idempotent,
        "privileged": node_type.privileged,
        "parametersSchema": node_type.parameters_schema,
        "resultsSchema": node_type.results_schema,
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
        first = self.pm.get_name(obj)
        if first is not None:
            raise PluginLoadError(name, f"it loads the very object {first} registered "
                                  f"({getattr(obj, '__name__', obj)!r}): two distributions "
                                  "share that import name, and one interpreter imports only "
                                  "one of them; install each version in its own environment "
                                  "(`nodehost packages install`)")
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

    def _register(self, found: list[Package], name: str,
                  distribution: str = "") -> LoadReport:
        """Add what a plugin provides to the catalog; PluginLoadError on a conflict."""
        for package in found:
            self.catalog.add(package, origin=name, distribution=distribution)
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
                reports.append(self._register(found, name, label))
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
