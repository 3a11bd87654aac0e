"""ops.bench.redis_calls: MONITOR lines counted by caller, commands inside scripts included."""

from __future__ import annotations

import hashlib

from falq.ops.bench.redis_calls import classify, in_order
from falq.shared import scripts


def _sha(name: str) -> str:
    return hashlib.sha1(scripts.source(name).encode()).hexdigest()


def test_commands_a_script_runs_count_for_that_script() -> None:
    lines = [
        {"command": f"EVALSHA {_sha('job')} 1 k1 save 7", "client_address": "127.0.0.1", "client_port": "5"},
        {"command": "HMGET falq:job:1 version state", "client_address": "lua", "client_port": ""},
        {"command": "HSET falq:job:1 version 2", "client_address": "lua", "client_port": ""},
        {"command": "PUBLISH falq:events x", "client_address": "127.0.0.1", "client_port": "5"},
        {"command": f"EVALSHA {_sha('lease')} 2 k k2 acquire t", "client_address": "127.0.0.1", "client_port": "6"},
        {"command": "SET falq:lease:1 t", "client_address": "lua", "client_port": ""},
    ]
    calls = classify(lines, jobs=2)
    assert calls.top == {"script job.save": 1, "PUBLISH": 1, "script lease.acquire": 1}
    assert calls.inside == {"job.save": 2, "lease.acquire": 1}
    assert calls.total == 6
    table = calls.table()
    assert "script job.save" in table and "3.00" in table  # 6 commands over 2 jobs


def test_the_trace_keeps_redis_order_and_counts_each_scripts_own_commands() -> None:
    lines = [
        {"command": f"EVALSHA {_sha('job')} 2 falq:job:1 k2 save 1", "client_address": "127.0.0.1", "client_port": "5"},
        {"command": "HMGET falq:job:1 version state", "client_address": "lua", "client_port": ""},
        {"command": "HSET falq:job:1 version 2", "client_address": "lua", "client_port": ""},
        {"command": "GET falq:pricing", "client_address": "127.0.0.1", "client_port": "6"},
        {"command": f"EVALSHA {_sha('lease')} 2 falq:lease:1 k release t", "client_address": "127.0.0.1",
         "client_port": "5"},
        {"command": "DEL falq:lease:1", "client_address": "lua", "client_port": ""},
    ]
    out = [line.split() for line in in_order(lines)]
    assert out == [["5", "script", "job.save", "[2]", "falq:job:1"],
                   ["6", "GET", "falq:pricing"],
                   ["5", "script", "lease.release", "[1]", "falq:lease:1"]]
