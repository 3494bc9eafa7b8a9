"""Parameters in, results out, as a node function's own types say (tier 2, no I/O).

Shared by the in-process executor and the worker process (which must not import anything
the daemon runs on, such as anyio: a worker may live in an environment of its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import Code
from ..model import ErrorInfo
from . import AttemptFailed

if TYPE_CHECKING:
    from ..node_api import NodeSpec

__all__ = ["decode_parameters", "encode_results"]


def decode_parameters(spec: NodeSpec, parameters: dict[str, Any]) -> Any:
    """Parameters as the node function takes them; AttemptFailed if they do not fit."""
    try:
        return spec.decode_params(parameters)
    except msgspec.ValidationError as exc:
        raise AttemptFailed(
            ErrorInfo(code=Code.PARAMETERS, message=f"parameters do not fit node type "
                      f"{spec.type!r}: {exc}".replace("`$", "`$.parameters")),
            retryable=False,
        ) from None


def encode_results(spec: NodeSpec, value: Any) -> dict[str, Any]:
    """The function's return value as the node's results; AttemptFailed if it is wrong."""
    try:
        return spec.encode_result(value)
    except (msgspec.ValidationError, TypeError) as exc:
        raise AttemptFailed(
            ErrorInfo(code=Code.RESULTS, message=f"node type {spec.type!r} returned results "
                      f"that do not fit its declared type: {exc}"),
            retryable=False,
        ) from None
