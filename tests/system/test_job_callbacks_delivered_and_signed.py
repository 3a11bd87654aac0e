"""Per-job callbacks: the final record is POSTed, signed, and retried."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from falq.shared.egress import sign, verify
from falq.testing.stack import DevStack
from tests.conftest import wait_for


class _Receiver(BaseHTTPRequestHandler):
    hits: list[tuple[dict[str, str], bytes]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_signature_round_trip() -> None:
    header = sign("topsecret", b'{"a":1}')
    assert verify("topsecret", b'{"a":1}', header)
    assert not verify("topsecret", b'{"a":2}', header)
    assert not verify("other", b'{"a":1}', header)
    assert not verify("topsecret", b'{"a":1}', sign("topsecret", b'{"a":1}', 1000))  # stale


@pytest.mark.timeout(120)
def test_callback_posts_signed_final_record_with_retries(clean_stack: DevStack) -> None:
    from falq.producers import Falq

    _Receiver.hits = []
    _Receiver.fail_first = 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"FALQ_CALLBACK_SECRET": "callback-secret-123"}
        clean_stack.start_worker(concurrency=5, env=env)
        falq = Falq(clean_stack.settings(**env))
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        rec = falq.generate("call me back", callback_url=url).wait(60)
        assert rec.state == "completed"
        wait_for(lambda: len(_Receiver.hits) >= 3, 30, what="callback delivered after two 503s")
        headers, body = _Receiver.hits[-1]
        assert verify("callback-secret-123", body, headers["x-falq-signature"])
        sent = json.loads(body)
        assert sent["id"] == rec.id and sent["state"] == "completed" and sent["outputs"][0]["sha256"]
        final = wait_for(lambda: falq.job(rec.id).record().metadata.get("callback"), 10, what="outcome recorded")
        assert final["delivered"] is True and final["tries"] == 3
    finally:
        server.shutdown()
