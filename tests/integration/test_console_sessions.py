"""The web console's sessions, in a real Redis: only a hash of the session id is stored."""

from __future__ import annotations

import redis

from falq.gateway.console.access import Principal, Sessions, check_csrf, is_https


def test_sessions_keep_only_a_hash_of_the_id(redis_server: str) -> None:
    r = redis.Redis.from_url(redis_server)
    sessions = Sessions(r, "falqtest", ttl_s=120)
    p = Principal("default", frozenset({"admin"}), "env", "d" * 64)
    sid, sess = sessions.create(p)
    assert sessions.get(sid) is not None and sessions.get(sid).principal == p  # type: ignore[union-attr]
    stored = [k.decode() for k in r.keys("falqtest:console:session:*")]
    assert len(stored) == 1 and sid not in stored[0] and sid.encode() not in (r.get(stored[0]) or b"")
    assert 0 < r.ttl(stored[0]) <= 120
    assert check_csrf(sess.csrf, sess.csrf) and not check_csrf(sess.csrf, "x") and not check_csrf(sess.csrf, None)
    sessions.drop(sid)
    assert sessions.get(sid) is None and sessions.get("nonsense") is None
    assert is_https("http", {"x-forwarded-proto": "https"}) and not is_https("http", {})
