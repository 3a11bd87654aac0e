"""Schemathesis, driven by the gateway's own OpenAPI document, finds no server error (5xx).

Every operation of ``/openapi.json`` gets generated requests -- schema-conforming (positive)
and deliberately invalid (negative) bodies, query strings and headers -- sent to a real
gateway over a real stack with a falq API key; the only check is ``not_a_server_error``.
Example counts are bounded so the whole run takes well under a minute.

Schemathesis' pytest plugin (``from_fixture``) does not run under pytest 9, so the test
drives its Python API directly: one hypothesis run per operation, failures collected.
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from falq.gateway import GatewayServer
from falq.ops.stack import DevStack
from falq.shared.storage import Storage

KEY = "falq-schemathesis-key-1"
AUTH = {"Authorization": f"Key {KEY}"}
EXAMPLES = 15


def test_openapi_document_finds_no_server_errors(clean_stack: DevStack) -> None:
    failures: list[str] = []
    Storage(clean_stack.settings()).ensure_bucket()  # else /readyz rightly answers 503
    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as gw:
        schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20

        for op, mode in itertools.product(operations, GenerationMode):

            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case: Any) -> None:
                case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=30)

            try:
                run()
            except Unsatisfiable:  # no invalid request exists for an operation without inputs
                assert mode is GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, report them all
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
