"""Executors run one attempt of one node and return its results (tier 4).

The scheduler owns timing, limits and cancellation; an executor only runs the attempt it is
given. It returns the node's results as a dict, or raises:

- `nodehost.NodeError`, raised by the node itself: the attempt fails with that code;
- `AttemptFailed`, for failures the host determines (parameters that do not fit, results of
  the wrong type, a crashed worker process), with whether a retry can help;
- anything else: the node broke (`E.RUNNER.FAILURE`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import rebuild
from ..model import ErrorInfo

if TYPE_CHECKING:
    from ..engine import Attempt
    from ..node_api import Reporter

__all__ = ["AttemptFailed", "Executor"]


class AttemptFailed(Exception):
    """An attempt failed for a reason the host found (not raised by the node)."""

    def __init__(self, error: ErrorInfo, *, retryable: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.error,), {"retryable": self.retryable}))


class Executor(Protocol):
    """Runs attempts; one instance serves many attempts at once."""

    async def execute(
        self, attempt: Attempt, reporter: Reporter, is_cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        """Run the attempt to its end and return the results (see the module docstring)."""
        ...
