"""The OpenAPI 3.1 document of the HTTP API (tier 5, no I/O).

Component schemas come from the msgspec Structs the API encodes (`schema_components`), so
the document cannot drift from the wire shapes; paths, parameters and status codes are
written here, next to nothing else, and the test suite fuzzes the app against them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import __version__
from .api import MAX_LIMIT, RUN_STATUSES, ErrorBody, Health, PackageList, RunList
from .events import EVENT_TYPES, Envelope, Event
from .model import RunRef, RunSummary, StartRunRequest

__all__ = ["PREFIX", "openapi_document"]

PREFIX = "/api/v1"
_REF = "#/components/schemas/{name}"

_ERRORS = {
    "400": "The request is invalid; `details` lists every problem.",
    "401": "A bearer token is required, or the one given is not valid.",
    "403": "The Host header is not allowed (TCP listeners only), or the caller is one of the "
           "daemon's own processes (a node's worker, or a program a node started).",
    "404": "No such run (or it belongs to another tenant).",
    "409": "Conflict: an Idempotency-Key reused with another body, or a run already ended.",
    "413": "The request body is larger than the configured limit.",
    "415": "The request body must be application/json.",
    "503": "The daemon is shutting down.",
    "507": "The disk holding the journal is full: new runs are refused, reads go on.",
}


def _error(code: str) -> dict[str, Any]:
    return {
        "description": _ERRORS[code],
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}},
    }


def _ok(description: str, schema: dict[str, Any] | None = None,
        media: str = "application/json", headers: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
                    **(headers or {})},
    }
    out["content"] = {media: {"schema": schema or {"type": "string"}}}
    return out


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _responses(ok: dict[str, dict[str, Any]], *errors: str, auth: bool = True
               ) -> dict[str, Any]:
    codes = list(errors) + (["401", "403"] if auth else ["403"])
    return {**ok, **{code: _error(code) for code in sorted(set(codes))}}


_RUN_ID = {"name": "runId", "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    event_types = list(Event.__args__)
    _, schemas = msgspec.json.schema_components(
        [StartRunRequest, RunRef, RunSummary, RunList, ErrorBody, PackageList, Health, Envelope,
         *event_types],
        ref_template=_REF,
    )
    events_table = "\n".join(
        f"- `{tag}`: [{t.__name__}](#/components/schemas/{t.__name__})"
        for tag, t in zip(EVENT_TYPES, event_types, strict=True))
    schemas["RunDefinition"] = {
        "title": "RunDefinition",
        "description": "The workflow exactly as submitted (unknown and UI-only fields kept), "
                       "each root node with a `state` overlay (NodeStateView).",
        "allOf": [_ref("Workflow")],
    }
    last_event = {"description": "The latest event id when the answer was made: open the event "
                                 "stream with it as Last-Event-ID to miss nothing after it.",
                  "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        f"{PREFIX}/runs": {
            "post": {
                "operationId": "startRun",
                "summary": "Submit a workflow run",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "Same key and body: the same run again (202). Same key, "
                                   "other body: 409. Per tenant, kept 24 h by default.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                }],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("StartRunRequest")}}},
                "responses": _responses(
                    {"202": _ok("The run was admitted (durably).", _ref("RunRef"))},
                    "400", "409", "413", "415", "503", "507"),
            },
            "get": {
                "operationId": "listRuns",
                "summary": "List runs, oldest first, a page at a time",
                "parameters": [
                    {"name": "limit", "in": "query", "required": False, "schema": {
                        "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}},
                    {"name": "cursor", "in": "query", "required": False,
                     "description": "nextCursor of the previous page, with the same filters.",
                     "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "required": False,
                     "schema": {"enum": list(RUN_STATUSES)}},
                    {"name": "clientId", "in": "query", "required": False,
                     "schema": {"type": "string"}},
                ],
                "responses": _responses({"200": _ok("A page of runs.", _ref("RunList"))}, "400"),
            },
        },
        f"{PREFIX}/runs/{{runId}}": {
            "get": {
                "operationId": "getRun",
                "summary": "A run with its nodes",
                "parameters": [_RUN_ID],
                "responses": _responses({"200": _ok(
                    "The run.", _ref("RunSummary"), headers={"X-Last-Event-ID": last_event})},
                    "404"),
            },
        },
        f"{PREFIX}/runs/{{runId}}/definition": {
            "get": {
                "operationId": "getRunDefinition",
                "summary": "The workflow of a run with the state of each root node",
                "parameters": [_RUN_ID, {"name": "If-None-Match", "in": "header",
                                         "required": False, "schema": {"type": "string"}}],
                "responses": _responses({
                    "200": _ok("The definition.", _ref("RunDefinition"), headers={
                        "ETag": {"description": "definitionHash and the run's last event id.",
                                 "schema": {"type": "string"}}}),
                    "304": {"description": "Not modified since the ETag given."},
                }, "404"),
            },
        },
        f"{PREFIX}/runs/{{runId}}/cancel": {
            "post": {
                "operationId": "cancelRun",
                "summary": "Cancel a run",
                "parameters": [_RUN_ID],
                "responses": _responses(
                    {"202": _ok("The run was cancelled (durably).", _ref("RunRef"))},
                    "404", "409"),
            },
        },
        f"{PREFIX}/events": {
            "get": {
                "operationId": "streamEvents",
                "summary": "Server-Sent Events: the tenant's event envelopes, live",
                "description": (
                    "Frames are `id: <seq>`, `event: <type>`, `data: <Envelope JSON>`; "
                    "`: keepalive` comments keep idle streams open. With Last-Event-ID "
                    "(header, or the lastEventId parameter), what was missed is replayed "
                    "first (`replayed: true`). If it is no longer buffered, the stream starts "
                    "with a `stream.reset` event (its id is where the replay resumes): "
                    "refetch state over REST. A client that falls behind is disconnected "
                    "after a `: dropped` comment; reconnect with Last-Event-ID.\n\n"
                    "The envelope's `data` is one of these event types (its `kind` is the "
                    "envelope's `type`, and the SSE `event:` line):\n" + events_table),
                "parameters": [
                    {"name": "runId", "in": "query", "required": False,
                     "schema": {"type": "string"}},
                    {"name": "clientSessionId", "in": "query", "required": False,
                     "schema": {"type": "string"}},
                    {"name": "lastEventId", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
                ],
                "responses": _responses({"200": _ok(
                    "An endless event stream; each data line is an Envelope.",
                    media="text/event-stream")}, "400", "404"),
            },
        },
        f"{PREFIX}/packages": {
            "get": {
                "operationId": "listPackages",
                "summary": "Installed node packages, their node types and JSON schemas",
                "responses": _responses({"200": _ok("The packages.", _ref("PackageList"))}),
            },
        },
        f"{PREFIX}/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness; 503 while shutting down",
                "security": [],
                "responses": {
                    "200": _ok("Serving.", _ref("Health")),
                    "403": _error("403"),
                    "503": _ok("Shutting down.", _ref("Health")),
                },
            },
        },
        f"{PREFIX}/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "responses": _responses({"200": _ok("The metrics.", media="text/plain")}),
            },
        },
        f"{PREFIX}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _ok("OpenAPI 3.1.", {"type": "object"}),
                              "403": _error("403")},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nodehost",
            "version": __version__,
            "description": (
                "The nodehost daemon's API. By default it listens on a Unix socket whose file "
                "permissions are the authentication; on TCP every request but /healthz and "
                "/openapi.json needs a bearer token, and each token sees only its tenant's "
                "runs and events. Every answer carries X-Request-ID (yours, or a new one); "
                "every error is an ErrorBody."),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": {"X-Request-ID": {
                "description": "The request's id: the X-Request-ID sent, or a new one.",
                "schema": {"type": "string"}}},
        },
        "security": [{"bearer": []}, {}],
    }
