"""Schemathesis, driven by the gateway's own OpenAPI document, finds no answer the document
does not describe, and no server error.

Every operation of ``/openapi.json`` gets generated requests -- schema-conforming (positive)
and deliberately invalid (negative) bodies, query strings and headers -- sent to a real
gateway over a real stack with a falq API key (the operator's). Each answer must

* not be a server error (5xx),
* carry a status code the operation documents, with the documented content type,
* match the documented schema of that status (JSON bodies, and the JSONL files of
  ``/v1/batches/{id}/results|errors`` row by row), with the documented headers,
* and a negative request must be refused (``negative_data_rejection``: bad input accepted
  with a 2xx fails).

Random ids mostly hit the 404 branch, so a second pass sends every operation that takes a
job, request, batch or tenant id the ids of real objects made first (a JSONL batch upload
with a chained line, a job), checked the same way. Example counts are bounded so the whole
run takes well under a minute.

Schemathesis' pytest plugin (``from_fixture``) does not run under pytest 9, so the test
drives its Python API directly: one hypothesis run per operation, failures collected.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from falq.gateway import GatewayServer
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack

KEY = "falq-schemathesis-key-1"
AUTH = {"Authorization": f"Key {KEY}"}
#: Examples per operation and mode; FALQ_SCHEMATHESIS_EXAMPLES=300 for a longer hunt.
EXAMPLES = int(os.environ.get("FALQ_SCHEMATHESIS_EXAMPLES", "15"))
JSONL = "application/jsonl"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]


@schemathesis.serializer(JSONL)
def _to_jsonl(ctx: Any, value: Any) -> bytes:
    """The document reads a JSONL body as the array of its lines: one line per item. A value
    that is not an array has no JSONL spelling; it goes as one line holding it in an array,
    which the route must refuse (every line must be a JSON object)."""
    items = value if isinstance(value, list) else [[value]]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@schemathesis.deserializer(JSONL)
def _from_jsonl(ctx: Any, response: Any) -> list[Any]:
    """A JSONL answer as the array of its rows, for the documented ``array`` schema."""
    return [json.loads(line) for line in response.content.decode("utf-8").splitlines() if line.strip()]


#: Status codes answered, per operation (``POST /v1/batches``): proof the run reached each route.
Seen = dict[str, set[int]]


def _call(case: Any, seen: Seen) -> None:
    response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)
    seen.setdefault(f"{case.operation.method.upper()} {case.operation.path}", set()).add(response.status_code)


def _fuzz(op: Any, mode: GenerationMode, seen: Seen) -> None:
    @given(case=op.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        _call(case, seen)

    run()


def _seed(base: str) -> dict[str, str]:
    """Real objects for the id-taking operations: a chained two-line batch, a queued job, and
    a cancelled one for fal's routes (its status is COMPLETED, so the SSE stream ends at once)."""
    upload = (b'{"id": "fox", "input": {"prompt": "a red fox in the snow"}}\n'
              b'{"endpoint": "fal-ai/qwen-image-2/edit", "input": {"prompt": "the fox at night", '
              b'"image_urls": ["falq:fox#0"]}}\n')
    batch = httpx.post(f"{base}/v1/batches?name=seed", content=upload, headers={**AUTH, "content-type": JSONL},
                       timeout=30)
    assert batch.status_code == 201, batch.text
    made = []
    for prompt in ("a heron", "a crane"):
        job = httpx.post(f"{base}/v1/jobs", json={"endpoint": "fal-ai/qwen-image-2/text-to-image",
                                                  "input": {"prompt": prompt}}, headers=AUTH, timeout=30)
        assert job.status_code == 201, job.text
        made.append(job.json()["id"])
    gone = httpx.post(f"{base}/v1/jobs/{made[1]}/cancel", headers=AUTH, timeout=30)
    assert gone.json()["state"] == "cancelled", gone.text
    return {"batch_id": batch.json()["id"], "job_id": made[0], "request_id": made[1], "name": "default"}


def _with_real_ids(op: Any, ids: dict[str, str], seen: Seen) -> None:
    """Positive cases of ``op`` with its path ids replaced by the seeded objects' ids."""
    wanted = {p.name for p in op.path_parameters}
    if not wanted or not wanted <= set(ids):
        return

    @given(case=op.as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=5, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        case.path_parameters = {name: ids[name] for name in wanted}
        _call(case, seen)

    run()


def test_openapi_document_describes_every_answer(clean_stack: DevStack) -> None:
    failures: list[str] = []
    seen: Seen = {}
    Storage(clean_stack.settings()).ensure_bucket()  # else /readyz rightly answers 503
    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as gw:
        schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
        # Unknown query parameters are ignored by every route, as HTTP APIs do: not "bad input".
        # The key is sent on every request (headers=AUTH): dropping it is the 401 tests' business.
        schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
        results = list(schema.get_all_operations())
        operations = [result.ok() for result in results if isinstance(result, Ok)]
        assert len(operations) == len(results), [r for r in results if not isinstance(r, Ok)]  # each one readable
        paths = {op.path for op in operations}
        assert {"/v1/batches", "/v1/batches/{batch_id}/results", "/v1/tenants/{name}/keys"} <= paths
        assert len(operations) >= 40
        ids = _seed(gw.url)  # first: the fuzzing may set a budget of 0, which refuses any batch

        for op, mode in itertools.product(operations, GenerationMode):
            try:
                _fuzz(op, mode, seen)
            except Unsatisfiable:  # no invalid request exists for an operation without inputs
                assert mode is GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, report them all
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:2000]}")

        for op in operations:
            try:
                _with_real_ids(op, ids, seen)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{op.method.upper()} {op.path} (real ids): {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
    # Every batch route answered a success at least once (not only 404s and 422s).
    batch_ops = {name: codes for name, codes in seen.items() if name.split()[1].startswith("/v1/batches")}
    assert len(batch_ops) == 8, batch_ops
    assert all(any(200 <= c < 300 for c in codes) for codes in batch_ops.values()), batch_ops


def test_batch_routes_refuse_what_they_once_let_through(clean_stack: DevStack) -> None:
    """Regressions of ``gateway/rest/batches.py``: a ``limit`` of non-ASCII digits ("²" passes
    ``str.isdigit``, then ``int`` raised: a 500); an upload line nested too deeply or holding a
    huge integer (``json.loads`` raises RecursionError / ValueError there, not JSONDecodeError:
    a 500); and an upload whose Content-Length is over the limit (read whole into memory before
    being refused: now refused before reading)."""
    from falq.gateway.rest.batches import MAX_UPLOAD

    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as gw:
        for bad in ("²", "١٢", "9" * 5000, "+5", "0"):
            resp = httpx.get(f"{gw.url}/v1/batches", params={"limit": bad}, headers=AUTH, timeout=30)
            assert resp.status_code == 422, (bad, resp.text)
            assert resp.json()["detail"][0]["loc"] == ["query", "limit"]
        good = b'{"input": {"prompt": "a fox"}}\n'
        for bad_line, msg in ((b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
                              (b'{"input": {"prompt": "a", "seed": ' + b"9" * 5000 + b"}}", "4300 digits")):
            resp = httpx.post(f"{gw.url}/v1/batches", content=good + bad_line + b"\n", headers=AUTH, timeout=30)
            assert resp.status_code == 422, resp.text[:500]
            doc = resp.json()
            assert doc["detail"][0]["loc"] == ["body", "line 2"] and msg in doc["detail"][0]["msg"], doc["detail"]
            assert doc["invalid"][0]["line"] == 2
        assert httpx.get(f"{gw.url}/v1/batches", headers=AUTH, timeout=30).json()["data"] == []  # nothing enqueued
        host, port = gw.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST /v1/batches HTTP/1.1\r\nHost: {host}\r\nAuthorization: Key {KEY}\r\n"
                         f"Content-Type: {JSONL}\r\nContent-Length: {MAX_UPLOAD + 1}\r\n\r\n".encode()
                         + b'{"input": {"prompt": "a fox"}}\n')  # far fewer bytes than announced
            head = sock.recv(65536).decode("latin-1")
        assert head.startswith("HTTP/1.1 422"), head
        assert f"must be at most {MAX_UPLOAD} bytes" in head
