"""Node package versions in environments of their own, under `<state_dir>/packages` (tier 5).

`nodehost packages install SPEC` builds one virtual environment per distribution version
(uv when it is installed, else pip), so 1.0.0 and 2.0.0 of one distribution, with one
import name, live side by side. nodehost's worker runtime (nodehost, msgspec, pluggy) is
made importable there through links, not copies, and stub metadata tells the installer it
is present (a package's `Requires-Dist: nodehost` fetches nothing). A worker in the new
environment describes what it provides; that descriptor, stored beside it, is all the
daemon ever reads of it: the daemon never imports an environment's code.

An environment is built in a `.building-*` directory and renamed into place once its
descriptor is written: a broken install leaves nothing, and a half-deleted one is never
taken for installed (it is renamed away first).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from .descriptors import FORMAT, PackageDescriptor
from .errors import NodehostError, PluginLoadError, rebuild
from .plugins import Catalog, Location

__all__ = ["AlreadyInstalled", "Environments", "InstallFailed", "Installed", "add",
           "load_into"]

RUNTIME = ("nodehost", "msgspec", "pluggy")  # what a worker imports of nodehost's own
DESCRIPTOR = "descriptor.json"
RETIRED = "RETIRED"  # in an environment being uninstalled (a daemon's runs still use it)
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
_PINNED = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(?P<version>[^\s;,]+)\s*$")


class InstallFailed(NodehostError):
    """A SPEC could not be installed (nothing of it was kept)."""

    def __init__(self, spec: str, message: str) -> None:
        super().__init__(f"{spec}: {message}")
        self.spec = spec
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.spec, self.message), {}))


class _Stored(msgspec.Struct, kw_only=True):
    format: int = FORMAT
    distribution: str
    version: str
    python: str  # relative to the environment
    spec: str
    installer: str
    installed_at: str
    packages: list[PackageDescriptor]


@dataclass(frozen=True, slots=True)
class Installed:
    path: Path
    distribution: str
    version: str
    python: Path
    packages: list[PackageDescriptor]
    installer: str
    spec: str
    installed_at: str
    retired: bool = False  # being uninstalled: kept for the runs of a daemon that use it


@dataclass(frozen=True, slots=True)
class AlreadyInstalled:
    path: Path
    distribution: str
    version: str


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Environments:
    """The environments under one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()

    # --- reading -------------------------------------------------------------------------------

    def scan(self) -> tuple[list[Installed], list[str]]:
        """Every installed environment, and a problem line for each unreadable one."""
        found: list[Installed] = []
        problems: list[str] = []
        if not self.root.is_dir():
            return found, problems
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = entry / DESCRIPTOR
            try:
                stored = msgspec.json.decode(path.read_bytes(), type=_Stored)
            except FileNotFoundError:
                problems.append(f"{entry}: no {DESCRIPTOR} (not a finished install)")
                continue
            except (OSError, msgspec.DecodeError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            if stored.format > FORMAT:
                problems.append(f"{path}: descriptor format {stored.format} is newer than "
                                f"this nodehost reads ({FORMAT}); upgrade nodehost")
                continue
            found.append(Installed(entry, stored.distribution, stored.version,
                                   entry / stored.python, stored.packages, stored.installer,
                                   stored.spec, stored.installed_at,
                                   retired=(entry / RETIRED).exists()))
        return found, problems

    def installed(self) -> list[Installed]:
        return self.scan()[0]

    def find(self, name: str, version: str) -> Installed | None:
        """By distribution name (normalised) or by a node package name it provides."""
        for env in self.installed():
            if env.version == version and normalise(env.distribution) == normalise(name):
                return env
            if any((p.name, p.version) == (name, version) for p in env.packages):
                return env
        return None

    def retire(self, env: Installed) -> None:
        """Mark an environment as being uninstalled: a daemon offers it to no new run, and
        removes it once no run of its uses it (`remove`); never loaded again."""
        _write_atomically(env.path / RETIRED, b"")

    def remove(self, env: Installed | Path) -> None:
        """Delete an environment: renamed away first, so that it is never half there."""
        doomed = self.root / f".removing-{os.urandom(4).hex()}"
        os.rename(env if isinstance(env, Path) else env.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # --- installing ----------------------------------------------------------------------------

    def install(
        self,
        specs: Iterable[str],
        *,
        find_links: Iterable[str] = (),
        index_url: str | None = None,
        installer: str = "auto",
        taken: Mapping[tuple[str, str], str] | None = None,
        progress: Callable[[str], None] = lambda message: None,
    ) -> list[Installed | AlreadyInstalled]:
        """One environment per SPEC (a wheel, a project directory or a requirement), in
        order; InstallFailed (naming the SPEC) stops at the first that fails."""
        tool = _installer(installer)
        links = list(find_links)
        done: list[Installed | AlreadyInstalled] = []
        for spec in specs:
            known = self._known_before(spec)
            if known is not None:
                progress(f"{spec}: {known.distribution} {known.version} is installed already")
                done.append(known)
                continue
            progress(f"installing {spec} with {tool[0]}")
            done.append(self._install_one(spec, tool, links, index_url, dict(taken or {})))
        return done

    def _known_before(self, spec: str) -> AlreadyInstalled | None:
        match = _WHEEL.match(os.path.basename(spec)) if spec.endswith(".whl") else \
            _PINNED.match(spec)
        if match is None:
            return None
        name, version = match["name"], match["version"]
        path = self.root / f"{normalise(name)}-{version}"
        if (path / DESCRIPTOR).is_file():
            _refuse_retired(spec, path)
            return AlreadyInstalled(path, name, version)
        return None

    def _install_one(self, spec: str, tool: tuple[str, list[str]], links: list[str],
                     index_url: str | None, taken: dict[tuple[str, str], str],
                     ) -> Installed | AlreadyInstalled:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=self.root))
        try:
            python = _make_venv(building, tool, spec)
            _link_runtime(building, python)
            target = os.path.abspath(spec) if os.path.exists(spec) else spec
            args = ([*tool[1], "install", "--python", str(python), target] if tool[0] == "uv"
                    else [*tool[1], "--python", str(python), "install", "--quiet", target])
            for link in links:
                args += ["--find-links", os.path.abspath(link)]
            if index_url:
                args += ["--index-url", index_url]
            elif tool[0] == "uv" and os.path.exists(spec):
                args.append("--offline")  # a local SPEC needs no index
            elif os.path.exists(spec):
                args.append("--no-index")
            _call(spec, args, "installing")
            described = _call(spec, [str(python), "-m", "nodehost.executors.describe"],
                              "describing it", check=False)
            outcome = msgspec.json.decode(described.stdout)
            errors = outcome.get("errors") or []
            if errors or described.returncode != 0:
                raise InstallFailed(spec, "its node packages do not load: " + "; ".join(
                    f"{e['plugin']}: {e['error']}" for e in errors) if errors else
                    "it installs no node package (no 'nodehost.packages' entry points)")
            packages = msgspec.convert(outcome["packages"], list[PackageDescriptor])
            providers = sorted({p.distribution for p in packages})
            if len(providers) != 1:
                raise InstallFailed(spec, f"it installs several node package distributions "
                                          f"({', '.join(providers)}): install each by itself")
            distribution, _, version = providers[0].partition("==")
            final = self.root / f"{normalise(distribution)}-{version}"
            if (final / DESCRIPTOR).is_file():
                _refuse_retired(spec, final)
                return AlreadyInstalled(final, distribution, version)
            for env in self.installed():
                for p in env.packages:
                    taken.setdefault((p.name, p.version), f"{env.distribution}=={env.version} "
                                                          f"({env.path})")
            for p in packages:
                if (p.name, p.version) in taken:
                    raise InstallFailed(spec, f"package {p.name}=={p.version} is already "
                                              f"provided by {taken[(p.name, p.version)]}")
            stored = _Stored(distribution=distribution, version=version,
                             python=str(python.relative_to(building)), spec=spec,
                             installer=tool[0], installed_at=datetime.now(UTC).isoformat(),
                             packages=packages)
            _write_atomically(building / DESCRIPTOR, msgspec.json.encode(stored))
            os.rename(building, final)
            return Installed(final, distribution, version, final / stored.python, packages,
                             tool[0], spec, stored.installed_at)
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)


def _refuse_retired(spec: str, path: Path) -> None:
    if (path / RETIRED).exists():
        raise InstallFailed(spec, f"{path.name} is being uninstalled: runs of the daemon "
                                  "still use it; install it again once they end")


def load_into(catalog: Catalog, root: Path | str) -> list[str]:
    """Add every installed environment's packages to a catalog (one being uninstalled as
    retired: for the runs recovered at start only); the problems found (an unreadable
    environment, a package version provided twice), one line each."""
    installed, problems = Environments(root).scan()
    for env in installed:
        add(catalog, env, problems)
    return problems


def add(catalog: Catalog, env: Installed, problems: list[str]) -> None:
    """Add one environment's packages to a catalog (retired, if it is)."""
    location = Location(python=str(env.python), home=str(env.path))
    for descriptor in env.packages:
        try:
            catalog.add_descriptor(descriptor, f"{env.distribution}=={env.version} "
                                               f"(environment {env.path})", location)
        except PluginLoadError as exc:
            problems.append(str(exc))
            continue
        if env.retired:
            catalog.retire(descriptor.name, descriptor.version)


def _installer(choice: str) -> tuple[str, list[str]]:
    """("uv", [uv, "pip"]) or ("pip", [python, "-m", "pip"])."""
    if choice in ("auto", "uv"):
        uv: str | None
        try:
            from uv import find_uv_bin

            uv = find_uv_bin()
        except (ImportError, FileNotFoundError):
            uv = shutil.which("uv")
        if uv is not None:
            return ("uv", [uv, "pip"])
        if choice == "uv":
            raise InstallFailed("uv", "uv is not installed (pip install uv); or --installer pip")
    return ("pip", [sys.executable, "-m", "pip"])


def _make_venv(path: Path, tool: tuple[str, list[str]], spec: str) -> Path:
    if tool[0] == "uv":
        _call(spec, [tool[1][0], "venv", "--quiet", "--python", sys.executable, str(path)],
              "making its environment")
    else:
        _call(spec, [sys.executable, "-m", "venv", "--without-pip", str(path)],
              "making its environment")
    return path / "bin" / "python"


def _link_runtime(env: Path, python: Path) -> None:
    """nodehost, msgspec and pluggy of the daemon, linked into the environment, and stub
    metadata saying they are there (with their real versions, and no requirements)."""
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    runtime = env / "nodehost-runtime"
    runtime.mkdir()
    for name in RUNTIME:
        module = __import__(name)
        source = Path(module.__file__ or "").parent
        os.symlink(source, runtime / name)
        version = importlib.metadata.version(name)
        info = purelib / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        (info / "INSTALLER").write_text("nodehost\n")
        (info / "RECORD").write_text("")
    # relative to site-packages (as site reads .pth lines): the environment is renamed
    (purelib / "_nodehost_runtime.pth").write_text(f"{os.path.relpath(runtime, purelib)}\n")


def _call(spec: str, args: list[str], doing: str, *,
          check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        done = subprocess.run(args, capture_output=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallFailed(spec, f"{doing}: {exc}") from None
    if check and done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-8:]
        raise InstallFailed(spec, f"{doing} failed ({Path(args[0]).name} exit code "
                                  f"{done.returncode}):\n  " + "\n  ".join(tail))
    return done


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_suffix(".tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, path)
