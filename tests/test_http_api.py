"""The REST API in-process (httpx ASGITransport), on asyncio and trio."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from http_support import (
    STD,
    TOKEN_A,
    TOKEN_B,
    api_client,
    doc,
    gated,
    node,
    release,
)
from nodehost.config import ApiConfig
from nodehost.validate import Limits

pytestmark = pytest.mark.anyio

RUNS = "/api/v1/runs"


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    """The answer is the JSON error body, with the request id of the response."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert body["message"] and "Traceback" not in body["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    return body


async def test_start_run_answers_202_with_a_run_ref_and_the_run_finishes() -> None:
    """POST /runs: 202 RunRef (camelCase) with Location; GET /runs/{id} has the nodes."""
    async with api_client() as t:
        response = await t.client.post(RUNS, json=doc(node("a"), node("b"), edges=[("a", "b")]))
        assert response.status_code == 202
        ref = response.json()
        assert set(ref) == {"runId", "status", "definitionHash", "clientId", "createdAt"}
        assert ref["clientId"] == "c1" and len(ref["definitionHash"]) == 64
        assert response.headers["location"] == f"{RUNS}/{ref['runId']}"
        assert await t.finished(ref["runId"]) == "succeeded"
        response = await t.client.get(f"{RUNS}/{ref['runId']}")
        assert response.status_code == 200
        run = response.json()
        assert run["status"] == "succeeded" and run["startedAt"] and run["finishedAt"]
        assert {n["nodeId"]: n["status"] for n in run["nodes"]} == {"a": "succeeded",
                                                                    "b": "succeeded"}
        assert int(response.headers["x-last-event-id"]) == t.host.engine.event_seq


async def test_definition_is_the_document_as_sent_with_state_and_an_etag() -> None:
    """Unknown and UI-only fields come back; every root node has its state; ETag + 304."""
    document = doc(node("a"), node("b", "nodehost.std.fail", message="no"),
                   edges=[("a", "b")], ui={"zoom": 2})
    document["workflow"]["nodes"][0]["position"] = {"x": 10, "y": 20}
    async with api_client() as t:
        ref = await t.submit(document)
        url = f"{RUNS}/{ref['runId']}/definition"
        first = await t.client.get(url)
        assert first.status_code == 200
        await t.finished(ref["runId"])
        response = await t.client.get(url)
        definition = response.json()
        assert definition["ui"] == {"zoom": 2}
        assert definition["nodes"][0]["position"] == {"x": 10, "y": 20}
        states = {n["id"]: n["state"] for n in definition["nodes"]}
        assert states["a"]["stage"] == "succeeded"
        assert states["b"]["stage"] == "failed" and states["b"]["error"]["message"] == "no"
        etag = response.headers["etag"]
        assert etag != first.headers["etag"]  # the state changed in between
        assert etag.startswith(f'"{ref["definitionHash"]}.')
        again = await t.client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        stale = await t.client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert stale.status_code == 200


async def test_an_invalid_workflow_is_400_with_every_issue_by_path() -> None:
    """Validation failures list each problem with its JSON path in `details`."""
    document = doc(node("a"), node("a"), node("c", "nodehost.std.delay", seconds=1))
    document["workflow"]["nodes"][2]["package"] = {**STD, "version": "9.9.9"}
    async with api_client() as t:
        body = assert_error(await t.client.post(RUNS, json=document), 400, "invalid_workflow")
        paths = {d["path"] for d in body["details"]}
        assert "$.workflow.nodes[1].id" in paths
        assert "$.workflow.nodes[2].package.version" in paths


@pytest.mark.parametrize(("content", "path"), [
    (b"{not json", "$"),
    (b"[1, 2]", "$"),
    (b'{"clientId": "x"}', "$"),
    (b'{"workflow": 1, "clientId": "x"}', "$.workflow"),
])
async def test_malformed_bodies_are_400(content: bytes, path: str) -> None:
    """Not JSON, not an object, no workflow, a workflow of the wrong type: 400 with a path."""
    async with api_client() as t:
        response = await t.client.post(RUNS, content=content,
                                       headers={"Content-Type": "application/json"})
        body = assert_error(response, 400, "invalid_workflow")
        assert body["details"][0]["path"] == path


async def test_an_integer_the_journal_cannot_hold_is_400_at_its_path() -> None:
    """JSON integers have no bound; one past 64 bits is refused by path, not a 500."""
    async with api_client() as t:
        document = doc(node("a", "nodehost.std.delay", seconds=0.01, value=[1, 2**64]))
        response = await t.client.post(RUNS, json=document)
        body = assert_error(response, 400, "invalid_workflow")
        assert body["details"][0]["path"] == "$.workflow.nodes[0].parameters.value[1]"
        assert "out of range" in body["details"][0]["message"]
        assert len(t.host.engine.runs) == 0


@pytest.mark.parametrize("depth", [950, 990, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("keyed", [False, True])
async def test_deeply_nested_values_are_400_or_accepted_never_500(depth: int,
                                                                  keyed: bool) -> None:
    """Hostile nesting (lists and objects, with or without an Idempotency-Key): answered
    400 naming the nesting, or accepted, never an internal error."""
    async with api_client() as t:
        base = json.dumps(doc(node("a", "nodehost.std.delay", seconds=0.01)))
        for value in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            body = base.replace('"seconds": 0.01', '"seconds": 0.01, "value": ' + value)
            headers = {"Content-Type": "application/json"}
            if keyed:
                headers["Idempotency-Key"] = f"deep-{depth}-{len(value)}"
            response = await t.client.post(RUNS, content=body, headers=headers)
            if response.status_code != 202:
                error = assert_error(response, 400, "invalid_workflow")
                assert "nested too deeply" in error["details"][0]["message"]
            else:
                assert depth < 1_000


async def test_a_body_that_is_not_json_is_415() -> None:
    """POST /runs takes application/json only."""
    async with api_client() as t:
        response = await t.client.post(RUNS, content=json.dumps(doc()),
                                       headers={"Content-Type": "text/plain"})
        assert_error(response, 415, "unsupported_media_type")


async def test_a_body_over_the_limit_is_413_by_length_and_while_reading() -> None:
    """A Content-Length over the limit, and a chunked body that grows over it: 413."""
    async with api_client(settings=ApiConfig(max_body_bytes=2000)) as t:
        big = json.dumps(doc(node("a", "nodehost.std.delay", seconds=0.01,
                                  value="x" * 3000))).encode()
        response = await t.client.post(RUNS, content=big,
                                       headers={"Content-Type": "application/json"})
        assert_error(response, 413, "payload_too_large")

        # no Content-Length (chunked): the limit is enforced while the body is read
        chunks = [big[i:i + 500] for i in range(0, len(big), 500)]
        status, body = await t.raw("POST", RUNS, chunks,
                                   [(b"content-type", b"application/json")])
        assert status == 413
        assert json.loads(body)["error"] == "payload_too_large"
        assert len(t.host.engine.runs) == 0
        small = await t.client.post(RUNS, json=doc())
        assert small.status_code == 202


async def test_a_document_over_the_document_limit_is_400_from_the_validator() -> None:
    """Under the body limit but over [documents] max_document_bytes: 400, naming the size."""
    async with api_client() as t:
        t.host.documents.limits = Limits(max_document_bytes=300)
        response = await t.client.post(RUNS, json=doc(node("a", "nodehost.std.delay",
                                                           seconds=0.01, value="x" * 400)))
        body = assert_error(response, 400, "invalid_workflow")
        assert "over the limit of 300" in body["details"][0]["message"]


async def test_idempotency_key_gives_the_same_run_and_409_for_another_body() -> None:
    """Same key + same body (any formatting): the same run, 202; other body: 409."""
    async with api_client() as t:
        key = {"Idempotency-Key": "order-42"}
        first = await t.client.post(RUNS, json=doc(), headers=key)
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        same = await t.client.post(RUNS, content=json.dumps(doc(), indent=3), headers={
            **key, "Content-Type": "application/json"})
        assert same.status_code == 202
        assert same.json()["runId"] == first.json()["runId"]
        assert same.headers["idempotent-replayed"] == "true"
        other = await t.client.post(RUNS, json=doc(client_id="c2"), headers=key)
        body = assert_error(other, 409, "idempotency_conflict")
        assert first.json()["runId"] in body["message"]
        assert len(t.host.engine.runs) == 1
        fresh = await t.client.post(RUNS, json=doc(), headers={"Idempotency-Key": "order-43"})
        assert fresh.json()["runId"] != first.json()["runId"]
        too_long = await t.client.post(RUNS, json=doc(), headers={"Idempotency-Key": "k" * 65})
        body = assert_error(too_long, 400, "invalid_request")
        assert body["details"][0]["path"] == "Idempotency-Key"


async def test_idempotency_keys_are_per_tenant() -> None:
    """Another tenant using the same key gets its own run."""
    tokens = {TOKEN_A: "a", TOKEN_B: "b"}
    async with api_client(tokens=tokens) as t:
        key = {"Idempotency-Key": "shared"}
        a = await t.client.post(RUNS, json=doc(), headers={**key, "Authorization":
                                                           f"Bearer {TOKEN_A}"})
        b = await t.client.post(RUNS, json=doc(), headers={**key, "Authorization":
                                                           f"Bearer {TOKEN_B}"})
        assert a.status_code == b.status_code == 202
        assert a.json()["runId"] != b.json()["runId"]


async def test_list_filters_and_validates_its_parameters() -> None:
    """status and clientId filter; limit outside 1..200 and unknown statuses are 400."""
    async with api_client() as t:
        ok = await t.submit(doc(client_id="alpha"))
        await t.finished(ok["runId"])
        bad = await t.submit(doc(node("f", "nodehost.std.fail"), client_id="beta"))
        await t.finished(bad["runId"])
        response = await t.client.get(RUNS)
        listing = response.json()
        assert [r["runId"] for r in listing["items"]] == [ok["runId"], bad["runId"]]
        assert listing["nextCursor"] is None
        assert "nodes" not in listing["items"][0]
        failed = (await t.client.get(RUNS, params={"status": "failed"})).json()
        assert [r["runId"] for r in failed["items"]] == [bad["runId"]]
        alpha = (await t.client.get(RUNS, params={"clientId": "alpha"})).json()
        assert [r["runId"] for r in alpha["items"]] == [ok["runId"]]
        for params in ({"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"status": "done"}):
            body = assert_error(await t.client.get(RUNS, params=params), 400, "invalid_request")
            assert body["details"][0]["path"] in params


async def test_a_garbage_cursor_or_one_with_other_filters_is_400() -> None:
    """A cursor that does not decode, or that was issued for other filters: 400."""
    async with api_client() as t:
        for _ in range(3):
            await t.submit(doc(client_id="x"))
        page = (await t.client.get(RUNS, params={"limit": 1, "clientId": "x"})).json()
        cursor = page["nextCursor"]
        assert cursor
        for garbage in ("garbage", "!!!", cursor[:-3], "A" * 40):
            response = await t.client.get(RUNS, params={"cursor": garbage, "clientId": "x"})
            body = assert_error(response, 400, "invalid_cursor")
            assert body["details"][0]["path"] == "cursor"
        other = await t.client.get(RUNS, params={"cursor": cursor, "clientId": "y"})
        assert "other filters" in assert_error(other, 400, "invalid_cursor")["message"]
        same = await t.client.get(RUNS, params={"cursor": cursor, "clientId": "x"})
        assert same.status_code == 200


async def test_paging_returns_every_run_exactly_once_while_runs_change_status() -> None:
    """Keyset paging: runs finishing, failing and being cancelled between pages change
    nothing about which runs each page holds."""
    async with api_client() as t:
        submitted, gates = [], []
        for i in range(30):
            document, gate = gated(client_id=f"c{i % 3}")
            submitted.append((await t.submit(document))["runId"])
            gates.append(gate)
        seen: list[str] = []
        cursor = None
        turn = 0
        while True:
            params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
            response = await t.client.get(RUNS, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            seen.extend(r["runId"] for r in page["items"])
            # between pages: finish some runs (before and after the cursor), cancel others
            for offset in (turn, 29 - turn, 15 + turn % 10):
                release(gates[offset])
            await t.client.post(f"{RUNS}/{submitted[(turn * 7) % 30]}/cancel")
            for offset in (turn, 29 - turn):
                await t.finished(submitted[offset])
            turn += 1
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == submitted  # every run once, in creation order
        for gate in gates:
            release(gate)
        assert {await t.finished(run_id) for run_id in submitted} == {"succeeded",
                                                                      "cancelled"}


async def test_cancel_is_202_then_409_and_404_for_unknown_runs() -> None:
    """Cancel a running run; cancelling again (already final) is 409; unknown is 404."""
    async with api_client() as t:
        document, gate = gated()
        ref = await t.submit(document)
        response = await t.client.post(f"{RUNS}/{ref['runId']}/cancel")
        assert response.status_code == 202
        assert response.json()["status"] == "cancelled"
        assert await t.finished(ref["runId"]) == "cancelled"
        again = await t.client.post(f"{RUNS}/{ref['runId']}/cancel")
        assert "cancelled" in assert_error(again, 409, "run_finished")["message"]
        missing = await t.client.post(f"{RUNS}/{uuid.uuid4()}/cancel")
        assert_error(missing, 404, "not_found")
        release(gate)


async def test_every_answer_has_a_request_id_and_errors_are_json() -> None:
    """X-Request-ID is echoed (if sane) or made up, on successes and on every error."""
    async with api_client() as t:
        response = await t.client.get("/api/v1/healthz", headers={"X-Request-ID": "abc-123"})
        assert response.headers["x-request-id"] == "abc-123"
        generated = await t.client.get("/api/v1/healthz",
                                       headers={"X-Request-ID": "bad id\twith junk"})
        assert generated.headers["x-request-id"] not in ("", "bad id\twith junk")
        assert_error(await t.client.get("/nowhere"), 404, "not_found")
        assert_error(await t.client.get(f"{RUNS}/{uuid.uuid4()}"), 404, "not_found")
        assert_error(await t.client.get(f"{RUNS}/{uuid.uuid4()}/definition"), 404, "not_found")
        put = await t.client.put(RUNS, json={})
        assert_error(put, 405, "method_not_allowed")
        assert set(put.headers["allow"].split(", ")) >= {"GET", "POST"}
        echoed = await t.client.get("/nowhere", headers={"X-Request-ID": "req-7"})
        assert echoed.json()["requestId"] == "req-7"


async def test_an_unexpected_failure_is_a_json_500_without_a_traceback() -> None:
    """A bug in a handler answers 500 with the error body and request id, nothing more."""
    async with api_client(raise_app_exceptions=False) as t:
        def broken() -> bytes:
            raise RuntimeError("secret internals")

        t.api.packages = broken  # type: ignore[method-assign]
        response = await t.client.get("/api/v1/packages", headers={"X-Request-ID": "r500"})
        body = assert_error(response, 500, "internal")
        assert "secret" not in response.text and "Traceback" not in response.text
        assert body["requestId"] == "r500"


async def test_tokens_required_means_401_without_one_except_public_endpoints() -> None:
    """With tokens required: no token or a wrong one is 401; healthz and openapi are open."""
    async with api_client(tokens={TOKEN_A: "a"}, require_token=True) as t:
        missing = await t.client.get(RUNS)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await t.client.get(RUNS, headers={"Authorization": "Bearer not-the-token"})
        assert_error(wrong, 401, "unauthorized")
        basic = await t.client.get(RUNS, headers={"Authorization": "Basic abc"})
        assert_error(basic, 401, "unauthorized")
        for public in ("/api/v1/healthz", "/api/v1/openapi.json"):
            assert (await t.client.get(public)).status_code == 200
        for private in ("/api/v1/packages", "/api/v1/metrics", f"{RUNS}/x"):
            assert_error(await t.client.get(private), 401, "unauthorized")
        ok = await t.client.get(RUNS, headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert ok.status_code == 200


async def test_without_required_tokens_anonymous_callers_are_the_default_tenant() -> None:
    """On the socket with optional tokens: no token acts as `default`, a token as its
    tenant, and a wrong token is still 401."""
    async with api_client(tokens={TOKEN_A: "a"}) as t:
        anonymous = await t.submit(doc())
        assert t.host.engine.runs[anonymous["runId"]].tenant == "default"
        mine = await t.submit(doc(), Authorization=f"Bearer {TOKEN_A}")
        assert t.host.engine.runs[mine["runId"]].tenant == "a"
        wrong = await t.client.get(RUNS, headers={"Authorization": "Bearer nope-nope-nope"})
        assert_error(wrong, 401, "unauthorized")


async def test_a_tenant_cannot_see_or_cancel_another_tenants_runs() -> None:
    """Token B gets 404 for A's run (get, definition, cancel) and does not list it."""
    async with api_client(tokens={TOKEN_A: "a", TOKEN_B: "b"}, require_token=True) as t:
        a = {"Authorization": f"Bearer {TOKEN_A}"}
        b = {"Authorization": f"Bearer {TOKEN_B}"}
        document, gate = gated()
        ref = await t.submit(document, **a)
        run_url = f"{RUNS}/{ref['runId']}"
        for method, url in (("GET", run_url), ("GET", f"{run_url}/definition"),
                            ("POST", f"{run_url}/cancel")):
            assert_error(await t.client.request(method, url, headers=b), 404, "not_found")
        assert (await t.client.get(RUNS, headers=b)).json()["items"] == []
        assert t.host.engine.runs[ref["runId"]].status == "running"  # B's cancel did nothing
        assert [r["runId"] for r in (await t.client.get(RUNS, headers=a)).json()["items"]] \
            == [ref["runId"]]
        assert (await t.client.get(run_url, headers=a)).status_code == 200
        release(gate)


async def test_packages_lists_node_types_with_their_json_schemas() -> None:
    """GET /packages: installed packages, versions, node types and their schemas."""
    async with api_client() as t:
        listing = (await t.client.get("/api/v1/packages")).json()
        packages = {(p["name"], p["version"]): p for p in listing["packages"]}
        std = packages[("nodehost.std", "1.0.0")]
        delay = {n["type"]: n for n in std["nodes"]}["nodehost.std.delay"]
        schema = delay["parametersSchema"]
        assert schema["$defs"]["DelayParams"]["required"] == ["seconds"]
        assert delay["resultsSchema"] and delay["idempotent"] is True


async def test_health_and_refusing_runs_while_stopping() -> None:
    """healthz is ok, then 503 once the daemon stops admitting runs (POST /runs too)."""
    async with api_client() as t:
        health = await t.client.get("/api/v1/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        t.api.stop_admitting()
        health = await t.client.get("/api/v1/healthz")
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        refused = await t.client.post(RUNS, json=doc())
        assert_error(refused, 503, "shutting_down")
        assert refused.headers["retry-after"]
        assert (await t.client.get(RUNS)).status_code == 200


async def test_metrics_are_prometheus_text_of_this_daemon() -> None:
    """Runs by status, nodes dispatched, events, SSE subscribers, requests and latency."""
    async with api_client() as t:
        ref = await t.submit(doc(node("a"), node("b")))
        await t.finished(ref["runId"])
        await t.client.get("/nowhere")
        response = await t.client.get("/api/v1/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert 'nodehost_runs{status="succeeded"} 1.0' in text
        assert "nodehost_nodes_dispatched_total 2.0" in text
        assert f"nodehost_events_published_total {float(t.host.bus.published)}" in text
        assert "nodehost_sse_subscribers 0.0" in text
        assert "nodehost_sse_dropped_subscribers_total 0.0" in text
        assert 'nodehost_http_requests_total{method="POST",route="/api/v1/runs",status="202"}' \
            in text
        assert 'route="other",status="404"' in text
        assert "nodehost_http_request_duration_seconds_bucket" in text


async def test_openapi_describes_every_route() -> None:
    """GET /openapi.json is OpenAPI 3.1 with every path and the wire schemas."""
    async with api_client() as t:
        document = (await t.client.get("/api/v1/openapi.json")).json()
        assert document["openapi"] == "3.1.0"
        assert set(document["paths"]) == {
            "/api/v1/runs", "/api/v1/runs/{runId}", "/api/v1/runs/{runId}/definition",
            "/api/v1/runs/{runId}/cancel", "/api/v1/events", "/api/v1/packages",
            "/api/v1/healthz", "/api/v1/metrics", "/api/v1/openapi.json",
        }
        schemas = document["components"]["schemas"]
        for name in ("StartRunRequest", "Workflow", "RunRef", "RunSummary", "RunList",
                     "ErrorBody", "PackageList", "Envelope"):
            assert name in schemas
        assert schemas["RunRef"]["required"] == ["runId", "status", "definitionHash",
                                                 "clientId", "createdAt"]


async def test_other_host_headers_are_403_when_hosts_are_restricted() -> None:
    """On TCP the Host header must be one of the allowed hosts (DNS rebinding)."""
    async with api_client(allowed_hosts=["localhost", "127.0.0.1"]) as t:
        assert (await t.client.get("/api/v1/healthz")).status_code == 200
        ported = await t.client.get("/api/v1/healthz", headers={"Host": "127.0.0.1:8765"})
        assert ported.status_code == 200
        evil = await t.client.get("/api/v1/healthz", headers={"Host": "evil.example:8765"})
        assert_error(evil, 403, "forbidden")
