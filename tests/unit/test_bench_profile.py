"""The profile page's grouping of a worker's busy time by library (ops/bench/scenarios/profile.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from falq.ops.bench.scenarios.profile import _by_library

SITE = "/v/lib/python3.11/site-packages/"


@dataclass
class Frame:
    function: str
    file_path: str
    time: float
    children: list[Frame] = field(default_factory=list)
    is_synthetic: bool = False

    @property
    def file_path_short(self) -> str:
        return self.file_path.split("site-packages/")[-1]


def test_each_sample_goes_to_the_innermost_library_and_gevent_waits_to_their_caller() -> None:
    wait = Frame("wait", SITE + "gevent/hub.py", 2.0)
    read = Frame("read_response", SITE + "redis/connection.py", 3.0, [wait])  # 1 s own
    save = Frame("save", "/w/falq/shared/jobs/store.py", 5.0, [read])  # 2 s own
    put = Frame("put_object", SITE + "botocore/client.py", 4.0)
    hub = Frame("run", SITE + "gevent/hub.py", 9.0)  # idle: not job work
    task = Frame("run_job", "/w/falq/workers/tasks.py", 10.0, [save, put])  # 1 s own
    root = Frame("<module>", "<string>", 19.0, [task, hub])
    acc: dict[str, float] = {}
    _by_library(root, acc)
    assert acc["Redis (redis-py)"] == 3.0  # its own second and the gevent wait under it
    assert acc["S3 (boto3, botocore, urllib3)"] == 4.0
    assert acc["falq's own code"] == 3.0
    assert "gevent" not in acc and acc.get("other", 0.0) == 0.0
