"""workers.reach: a host cut off from fal or S3 hands its jobs back only when another host is not.

Real Redis and real sockets: fal's queue URL points at a port nobody listens on, S3's at a
listening socket. (The partition test, tests/chaos/test_partitions.py, shows the whole effect
with network namespaces.)
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from falq.shared.settings import Settings
from falq.workers.maintenance import reach as reach_mod
from falq.workers.maintenance.reach import Reach


@pytest.fixture
def listening() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(20)
def test_cut_dependency_hands_back_only_while_another_host_reaches_it(
        r: redis.Redis, listening: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reach_mod, "CUT_AFTER_S", 0.0)
    monkeypatch.setattr(reach_mod, "INTERVAL_S", 0.0)  # no caching of the others' reports
    settings = Settings(_env_file=None, key_prefix="reachtest",  # type: ignore[call-arg]
                        fal_queue_url=f"http://127.0.0.1:{_closed_port()}",
                        s3_endpoint_url=f"http://127.0.0.1:{listening}")
    me = Reach(r, settings, owner="host-a:1")
    me.probe_once()
    assert me.is_cut("fal") and not me.is_cut("s3")
    assert json.loads(r.hget("reachtest:reach", "host-a:1") or b"{}")["cut"] == ["fal"]
    assert not me.hand_back("fal"), "nobody else reaches fal: keep the jobs (fal may be down for all)"

    r.hset("reachtest:reach", "host-b:2", json.dumps({"at": time.time(), "cut": []}))
    assert me.hand_back("fal") and not me.hand_back("s3")
    assert [me.bounce("job-1", "fal") for _ in range(4)] == [True, True, False, False]  # then it waits here

    r.hset("reachtest:reach", "host-b:2", json.dumps({"at": time.time() - 30, "cut": []}))  # b went quiet
    assert not me.hand_back("fal")
    me.stop()
    assert r.hget("reachtest:reach", "host-a:1") is None
