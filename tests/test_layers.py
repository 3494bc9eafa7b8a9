"""The package's tiers (DESIGN.md): a module imports only from its own tier or lower ones,
and the pure tiers import no event loop, server or process machinery.

This is what keeps the engine testable without I/O, the configuration loadable by the CLI
client without the scheduler, and the event types usable without the bus.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "nodehost"

TIERS: dict[str, int] = {
    # 1: data and pure functions
    "errors": 1, "model": 1, "bindings": 1, "graph": 1, "collector": 1,
    "config": 1, "descriptors": 1, "schemas": 1, "commands": 1, "reports": 1, "events": 1,
    "outputs": 1, "store.records": 1,
    # 2: what node packages see, and the catalog of them
    "hookspecs": 2, "node_api": 2, "plugins": 2, "validate": 2, "documents": 2, "policy": 2,
    "__init__": 2,
    # 3: the state machine; the bus and the store (the only writer to disk)
    "runstate": 3, "engine": 3, "bus": 3, "store": 3, "store.journal": 3,
    "store.snapshot": 3, "store.store": 3, "store.continuity": 3,
    # 4: running things: the scheduler, executors, recovery, the composition of a host
    "scheduler": 4, "executors": 4, "executors.frames": 4, "executors.inprocess": 4,
    "executors.coding": 4, "executors.describe": 4, "executors.polling": 4,
    "executors.subprocess": 4, "executors.worker": 4, "executors.landlock": 4,
    "executors.confinement": 4, "executors.loading": 4, "recovery": 4, "host": 4, "workdirs": 4,
    # 5: the API and the daemon's surroundings
    "api": 5, "environments": 5, "auth": 5, "configfile": 5, "http": 5, "idempotency": 5,
    "metrics": 5,
    "openapi": 5, "runs_index": 5, "systemd": 5, "descendants": 5,
    # 6: entry points
    "service": 6, "cli": 6, "client": 6, "console": 6, "testing": 6, "__main__": 6,
}

# modules below the scheduler that must stay free of event loops, servers and processes
# (node_api gives node authors anyio's helpers: it is what nodes run with)
PURE = {name for name, tier in TIERS.items() if tier <= 2} - {"node_api"} | {"runstate", "engine"}
NOT_IN_PURE = {"anyio", "asyncio", "trio", "starlette", "uvicorn", "httpx", "socket",
               "subprocess", "threading"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(nodehost modules, third-party or stdlib top-level modules) that `path` imports at
    module level or in functions, TYPE_CHECKING blocks left out (they are not run)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    ours: set[str] = set()
    theirs: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == "nodehost":
                    ours.add(rest or "__init__")
                else:
                    theirs.add(top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                if node.module is None:  # from . import x
                    for alias in node.names:
                        ours.add(".".join([*base, alias.name]).strip("."))
                    return
                ours.add(target or "__init__")
            elif node.module and node.module.partition(".")[0] == "nodehost":
                ours.add(node.module.partition(".")[2] or "__init__")
            elif node.module:
                theirs.add(node.module.partition(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {o for o in ours if o != ".".join(here)}, theirs


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_tier() -> None:
    names = {module_name(p) for p in MODULES}
    assert names == set(TIERS), (
        f"not in TIERS: {sorted(names - set(TIERS))}; gone: {sorted(set(TIERS) - names)}")


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_a_module_imports_nothing_above_its_tier(path: Path) -> None:
    name = module_name(path)
    ours, theirs = imports(path)
    tier = TIERS[name]
    above = sorted(o for o in ours if TIERS.get(o, TIERS.get(o.rpartition(".")[0], 0)) > tier)
    assert not above, f"{name} (tier {tier}) imports {above}"
    if name in PURE:
        assert not theirs & NOT_IN_PURE, f"{name} imports {sorted(theirs & NOT_IN_PURE)}"
