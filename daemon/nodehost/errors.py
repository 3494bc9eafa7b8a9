"""Error codes and the few exceptions nodehost raises (tier 1: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Code",
    "Issue",
    "NodeError",
    "NodehostError",
    "PluginLoadError",
    "WorkflowInvalid",
    "rebuild",
]


class Code:
    """Error codes carried in node and run errors (the seed's `E.*` namespace)."""

    RUNNER_FAILURE = "E.RUNNER.FAILURE"  # the node raised something other than NodeError
    RUNNER_CANCELLED = "E.RUNNER.CANCELLED"  # the node was cancelled (run cancel, failFast)
    TIMEOUT = "E.TIMEOUT"  # timeoutSeconds elapsed
    PARAMETERS = "E.NODE.PARAMETERS"  # parameters failed the node's declared schema
    RESULTS = "E.NODE.RESULTS"  # results failed the node's declared result type
    BINDING = "E.NODE.BINDING"  # an edge could not deliver its value
    UPSTREAM = "E.UPSTREAM.FAILED"  # reason a node was skipped
    UNAVAILABLE = "E.DISPATCH.UNAVAILABLE"  # no executor provides the node
    HOST_RESTARTED = "E.HOST.RESTARTED"  # the host restarted while the node ran
    SUBGRAPH = "E.SUBGRAPH.FAILED"  # a node inside a container's subgraph failed
    RESULT_TOO_LARGE = "E.RESULT.TOO_LARGE"  # a result or partial result over [outputs]
    RESULT_UNENCODABLE = "E.RESULT.UNENCODABLE"  # a value the journal cannot store
    INTERNAL = "E.INTERNAL"


def rebuild(cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> BaseException:
    """Unpickle an exception whose constructor is not `cls(*self.args)` (see `__reduce__`
    of the classes here): exceptions cross process pools, worker pipes and clusters."""
    return cls(*args, **kwargs)


class NodehostError(Exception):
    """Base class of the exceptions nodehost raises on purpose."""


class NodeError(NodehostError):
    """Raised by a node to fail with a code, a message and what to do about it.

    `retryable=False` says another attempt would fail the same way (a refusal, bad input):
    the node fails at once even if its workflow allows more attempts."""

    def __init__(
        self,
        code: str,
        message: str,
        remediation: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.remediation = remediation
        self.details = details
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.code, self.message, self.remediation),
                          {"details": self.details, "retryable": self.retryable}))

    def __repr__(self) -> str:
        return f"NodeError({self.code!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a document: where (a JSON path such as `$.nodes[2].id`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class WorkflowInvalid(NodehostError):
    """A workflow document was rejected; `issues` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"workflow is invalid ({len(self.issues)} problem(s)):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.issues,), {}))


class PluginLoadError(NodehostError):
    """A node package could not be loaded or conflicts with another one."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"{plugin}: {message}")
        self.plugin = plugin
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.plugin, self.message), {}))
