"""The benchmark graphs, as one neutral shape turned into a nodehost document or a Dask graph.

A graph is a list of nodes, each with the indexes of its upstream nodes (in index order, so
upstreams always come first). `data=True` is the variant with small dict results passed
along edges: in nodehost each edge binds the source's `/results/value` to the target's
`/parameters/in<k>`; in Dask the upstream results are the task's arguments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from . import nodes


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    deps: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.deps)

    def sinks(self) -> list[int]:
        has_down = set()
        for ups in self.deps:
            has_down.update(ups)
        return [i for i in range(len(self.deps)) if i not in has_down]


def chain(n: int) -> Shape:
    return Shape(f"chain {n:,}", [()] + [(i - 1,) for i in range(1, n)])


def fanout(n: int) -> Shape:
    """One source, `n` nodes that each depend on it, one join depending on all of them."""
    deps: list[tuple[int, ...]] = [()]
    deps += [(0,)] * n
    deps.append(tuple(range(1, n + 1)))
    return Shape(f"fan-out {n:,} + join", deps)


def layered(layers: int, width: int, fanin: int = 2, seed: int = 42) -> Shape:
    """`layers` x `width`; each node past the first layer depends on `fanin` random nodes of
    the layer before (random.Random(seed))."""
    rng = random.Random(seed)
    deps: list[tuple[int, ...]] = [()] * width
    for layer in range(1, layers):
        base = (layer - 1) * width
        for _ in range(width):
            deps.append(tuple(sorted(base + j for j in rng.sample(range(width), fanin))))
    return Shape(f"layered {layers}x{width}", deps)


def by_name(spec: str) -> Shape:
    """`chain:2000`, `fanout:10000`, `layered:50x200`."""
    kind, _, size = spec.partition(":")
    if kind == "chain":
        return chain(int(size))
    if kind == "fanout":
        return fanout(int(size))
    if kind == "layered":
        layers, _, width = size.partition("x")
        return layered(int(layers), int(width))
    raise ValueError(f"unknown graph {spec!r}")


# --- nodehost ----------------------------------------------------------------------------------

_PACKAGE = {"name": nodes.PACKAGE.name, "version": nodes.PACKAGE.version}
_OUT = [{"key": "out", "binding": {"path": "/results/value"}}]


def nodehost_document(shape: Shape, *, data: bool, id: str = "bench",
                      node_type: str | None = None,
                      package: dict[str, str] | None = None) -> dict[str, Any]:
    """A bare workflow document (camelCase wire format); `package` and the node type's
    prefix default to the bench's own (`bench` 1.0, `bench.noop` / `bench.value`)."""
    node_type = node_type or ("bench.value" if data else "bench.noop")
    pinned = package or _PACKAGE
    node_list: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for i, ups in enumerate(shape.deps):
        node: dict[str, Any] = {"id": f"n{i}", "type": node_type,
                                "package": pinned}
        if data:
            node["ui"] = {
                "inputPorts": [{"key": f"in{k}", "binding": {"path": f"/parameters/in{k}"}}
                               for k in range(len(ups))],
                "outputPorts": _OUT,
            }
            for k, up in enumerate(ups):
                edges.append({"source": {"node": f"n{up}", "port": "out"},
                              "target": {"node": f"n{i}", "port": f"in{k}"}})
        else:
            for up in ups:
                edges.append({"source": {"node": f"n{up}"}, "target": {"node": f"n{i}"}})
        node_list.append(node)
    return {"id": id, "schemaVersion": "2025-01", "metadata": {"name": shape.name},
            "nodes": node_list, "edges": edges}


# --- Dask --------------------------------------------------------------------------------------

def dask_graph(shape: Shape, *, data: bool, prefix: str = "n") -> tuple[dict[str, Any], list[str]]:
    """A Dask task graph dict (`{key: (fn, *upstream keys)}`) and the keys to compute (the
    sinks, so that nothing is culled). Keys are `<prefix><index>`: distributed reuses the
    results of keys it still holds, so each run of a graph needs keys of its own."""
    fn = nodes.dask_value if data else nodes.dask_noop
    dsk = {f"{prefix}{i}": (fn, *(f"{prefix}{u}" for u in ups))
           for i, ups in enumerate(shape.deps)}
    return dsk, [f"{prefix}{i}" for i in shape.sinks()]
