"""What a node package author writes against: `Package`, `node`, `Context` (tier 2).

A node function takes `(ctx, params)` and returns its results. `params` is a msgspec Struct
or a plain dict, chosen by the annotation; the result may be a Struct, a dict or None. Both
types are validated by msgspec and published as JSON Schema.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .config import Sandbox
from .descriptors import NodeType
from .errors import NodeError
from .reports import Artifact, Chunk, Metric, NodeReport, Partial, Progress

__all__ = ["Context", "NodeSpec", "Package", "Reporter"]

_NAME = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*$")

Reporter = Callable[[NodeReport], None]
"""Where a Context sends what the node reports: the host's executor, which hands it on to
the engine (in-process), or writes it to the worker pipe (in a worker process)."""


class _Checkpoint:
    """Returned by reporting calls: awaiting it is optional and yields to the event loop."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        import anyio.lowlevel

        return anyio.lowlevel.checkpoint().__await__()


_CHECKPOINT = _Checkpoint()
_NO_SANDBOX_SETTINGS = Sandbox()


class Context:
    """Handed to every node call: who it is, and how it reports back to the host.

    Reporting methods record at once; `await ctx.progress(...)` additionally lets other tasks
    run, so a long async loop that reports progress stays responsive to cancellation. In a
    sync node (run in a worker thread) call them without `await`.
    """

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        task_id: str,
        attempt: int,
        spec: NodeSpec | NodeType,
        reporter: Reporter,
        is_cancelled: Callable[[], bool] = lambda: False,
        tenant: str = "default",
        work_dir: Path | Callable[[], Path] | None = None,
        sandbox: Sandbox = _NO_SANDBOX_SETTINGS,
    ) -> None:
        self.run_id = run_id
        self.tenant = tenant
        self._work_dir = work_dir  # made when first asked for: most nodes never write files
        # what the operator lets nodes reach beyond it (`[sandbox]`)
        self.sandbox = sandbox
        self.node_id = node_id
        self.task_id = task_id
        self.attempt = attempt
        self.package = spec.package
        self.version = spec.version
        self.node_type = spec.type
        self._reporter = reporter
        self._is_cancelled = is_cancelled

    @property
    def work_dir(self) -> Path | None:
        """The run's own directory, where a node writes by default (None: the host has
        none); made on first use."""
        found = self._work_dir
        if callable(found):
            found = self._work_dir = found()
        return found

    @property
    def cancelled(self) -> bool:
        """True once the host asked this attempt to stop (cancel, timeout, failFast)."""
        return self._is_cancelled()

    def raise_if_cancelled(self) -> None:
        """Raise NodeError(E.RUNNER.CANCELLED) if the host asked this attempt to stop."""
        if self._is_cancelled():
            raise NodeError("E.RUNNER.CANCELLED", "the node was cancelled")

    def progress(
        self, fraction: float | None = None, message: str | None = None, *, stage: str | None = None
    ) -> _Checkpoint:
        """Report progress in 0..1 (clamped), with an optional message and stage name."""
        if fraction is not None:
            fraction = float(fraction)
            if not math.isfinite(fraction):
                raise ValueError(f"progress must be a finite number, got {fraction!r}")
            fraction = min(1.0, max(0.0, fraction))
        self._reporter(Progress(fraction, stage, message))
        return _CHECKPOINT

    def log(
        self,
        content: str | bytes,
        *,
        channel: str = "log",
        mime_type: str | None = None,
        terminal: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Stream a chunk of text or bytes on a channel (log, stdout, stderr, llm, ...)."""
        if isinstance(content, bytes | bytearray | memoryview):
            self._reporter(Chunk(channel, None, bytes(content),
                                 mime_type or "application/octet-stream", terminal, metadata))
        else:
            self._reporter(Chunk(channel, str(content), None, mime_type, terminal, metadata))

    def partial(self, update: dict[str, Any]) -> _Checkpoint:
        """Publish part of the results now; each top-level key replaces the previous value."""
        if not isinstance(update, dict):
            raise TypeError(f"partial() takes a dict of result keys, got {type(update).__name__}")
        self._reporter(Partial(msgspec.to_builtins(update)))
        return _CHECKPOINT

    def metric(self, name: str, value: float) -> None:
        """Record a numeric metric (the last value per name is kept)."""
        self._reporter(Metric(str(name), float(value)))

    def artifact(
        self,
        resource_id: str,
        type: str,
        *,
        size_bytes: int | None = None,
        inline: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Record an artifact (a file, an image...) produced by this node."""
        artifact: dict[str, Any] = {"resourceId": resource_id, "type": type}
        if size_bytes is not None:
            artifact["sizeBytes"] = int(size_bytes)
        if inline is not None:
            artifact["inline"] = inline
        if metadata:
            artifact["metadata"] = metadata
        self._reporter(Artifact(artifact))


NodeFunction = Callable[[Context, Any], Any]


@dataclass(frozen=True, slots=True, eq=False)
class NodeSpec:
    """One node type of one package version, as registered by its author."""

    package: str
    version: str
    type: str
    fn: NodeFunction
    params_type: Any  # a Struct or another msgspec type; None for a plain dict
    result_type: Any
    timeout: float | None = None
    retry: int = 1
    backoff: float = 0.0
    idempotent: bool = False
    description: str = ""
    # reaches the host beyond what [sandbox] confines (runs programs, ...): off unless the
    # operator's [policy] names it in `privileged`
    privileged: bool = False
    _schemas: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    # asked once per attempt on the hot path: worked out once, here
    is_async: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.package, self.version, self.type)

    def parameters_schema(self) -> dict[str, Any]:
        """JSON Schema of the parameters (any object when the node takes a plain dict)."""
        if "parameters" not in self._schemas:
            self._schemas["parameters"] = _object_schema(self.params_type)
        return self._schemas["parameters"]

    def results_schema(self) -> dict[str, Any]:
        """JSON Schema of the results (any object when the node returns a plain dict).

        A function annotated to return something other than an object (`-> int`) has its
        value published under the key `value`, and the schema says so.
        """
        if "results" not in self._schemas:
            self._schemas["results"] = _object_schema(self.result_type, wrap=True)
        return self._schemas["results"]

    def decode_params(self, params: dict[str, Any]) -> Any:
        """Parameters as the function wants them; msgspec.ValidationError if they do not fit."""
        if self.params_type is None:
            return params
        return msgspec.convert(params, self.params_type, strict=False)

    def encode_result(self, value: Any) -> dict[str, Any]:
        """The function's return value as the node's results (a dict)."""
        if value is None:
            return {}
        if self.result_type is not None:
            value = msgspec.convert(msgspec.to_builtins(value), self.result_type, strict=False)
        value = msgspec.to_builtins(value)
        if not isinstance(value, dict):
            return {"value": value}
        return value


class Package:
    """A node package: a name, a version and the node types it provides.

    >>> package = Package("acme.vision", "1.2.0")
    >>> @package.node("acme.vision.detect", timeout=30)
    ... async def detect(ctx, params: dict) -> dict:
    ...     return {"boxes": []}
    """

    def __init__(self, name: str, version: str, *, description: str = "") -> None:
        if not _NAME.match(name):
            raise ValueError(
                f"package name {name!r} must be lowercase words joined by '.', '_' or '-'"
            )
        if not version or any(c.isspace() for c in version):
            raise ValueError(f"package {name!r}: version {version!r} must be a non-empty token")
        self.name = name
        self.version = version
        self.description = description
        self.nodes: dict[str, NodeSpec] = {}

    def __repr__(self) -> str:
        return f"Package({self.name!r}, {self.version!r}, nodes={sorted(self.nodes)})"

    def node(
        self,
        type: str,
        *,
        timeout: float | None = None,
        retry: int = 1,
        backoff: float = 0.0,
        idempotent: bool = False,
        description: str | None = None,
        privileged: bool = False,
    ) -> Callable[[NodeFunction], NodeFunction]:
        """Register the decorated function as node type `type` of this package.

        `retry` is the number of attempts (1 = no retry); `idempotent` says the node may be
        run again after a host restart interrupted it; `privileged` says it acts on the host
        beyond files and the network (it runs programs, say): workflows may use it only
        where the operator's `[policy] privileged` names it.
        """
        if type in self.nodes:
            raise ValueError(f"package {self.name} {self.version}: node type {type!r} twice")
        if retry < 1:
            raise ValueError(f"node {type!r}: retry is a number of attempts, at least 1")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"node {type!r}: timeout must be > 0 seconds")

        def decorator(fn: NodeFunction) -> NodeFunction:
            params_type, result_type = _signature_types(type, fn)
            self.nodes[type] = NodeSpec(
                package=self.name,
                version=self.version,
                type=type,
                fn=fn,
                params_type=params_type,
                result_type=result_type,
                timeout=timeout,
                retry=retry,
                backoff=backoff,
                idempotent=idempotent,
                description=description if description is not None else _first_line(fn),
                privileged=privileged,
            )
            return fn

        return decorator


def _first_line(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.splitlines()[0] if doc else ""


def _signature_types(node_type: str, fn: Callable[..., Any]) -> tuple[Any, Any]:
    sig = inspect.signature(fn)
    if len(sig.parameters) != 2:
        raise TypeError(f"node {node_type!r}: the function must take (ctx, params)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # an annotation that cannot be resolved
        raise TypeError(f"node {node_type!r}: cannot resolve annotations: {exc}") from exc
    params_name = list(sig.parameters)[1]
    params_type = _typed_or_none(hints.get(params_name))
    result_type = _typed_or_none(_without_none(hints.get("return")))
    for which, tp, wrap in (("parameters", params_type, False), ("results", result_type, True)):
        try:
            _object_schema(tp, wrap=wrap)
        except TypeError as exc:
            raise TypeError(f"node {node_type!r}: {which}: {exc}") from None
    return params_type, result_type


def _typed_or_none(tp: Any) -> Any:
    """The annotation to validate against, or None for a plain dict, Any or nothing."""
    if tp is None or tp is Any or tp is type(None):
        return None
    if tp is dict or (typing.get_origin(tp) is dict and typing.get_args(tp)[1:] in ((), (Any,))):
        return None
    return tp


def _without_none(tp: Any) -> Any:
    """`X | None` -> X: returning None always gives empty results `{}`."""
    if tp is None or typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == len(typing.get_args(tp)):
        return tp
    return typing.Union[tuple(args)] if args else None  # noqa: UP007 - built at run time


def _object_schema(tp: Any, *, wrap: bool = False) -> dict[str, Any]:
    """The JSON Schema of an annotation that must describe a JSON object.

    msgspec's own schema (a Struct is a `$ref` into `$defs`). Parameters are always an
    object, so any other type is refused (TypeError); for results (`wrap`), another type
    describes the value published under the key `value`, and the schema says so.
    """
    if tp is None:
        return {"type": "object"}
    try:
        schema = msgspec.json.schema(tp)
    except TypeError as exc:
        message = str(exc).strip().splitlines()[-1]
        raise TypeError(f"msgspec cannot describe {_type_name(tp)}: {message}") from None
    defs = schema.get("$defs", {})
    if _is_object(schema, defs):
        return schema
    if not wrap:
        raise TypeError(
            f"{_type_name(tp)} is not an object type: parameters are a JSON object, so "
            "annotate them with a msgspec Struct (or a dict)"
        )
    inner = {k: v for k, v in schema.items() if k != "$defs"}
    wrapped: dict[str, Any] = {
        "type": "object", "properties": {"value": inner}, "required": ["value"],
    }
    if defs:
        wrapped["$defs"] = defs
    return wrapped


def _is_object(schema: dict[str, Any], defs: dict[str, Any]) -> bool:
    """Does the schema only admit JSON objects (a union of Structs counts)?"""
    if "$ref" in schema:
        return _is_object(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        return all(_is_object(s, defs) for s in schema["anyOf"])
    return schema.get("type") == "object"


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp)
