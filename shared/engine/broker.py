"""kombu's Redis transport, hardened: a malformed message on a queue is dropped, not fatal.

kombu's Redis channel BRPOPs a queue item and decodes it inline: JSON, then the envelope
(``properties.delivery_tag``, a base64 ``body``). Anything else -- random bytes, JSON that
is not an envelope, a body that is not base64 -- raises inside the consumer loop, and
Celery stops the worker with "Unrecoverable error" (exit status 0, so a supervisor with
``restart: on-failure`` does not even restart it). One stray ``LPUSH`` would take down
every worker that pops it.

This transport checks the item before kombu does. A malformed item is logged (its size
and the problem, never its content) and dropped: it was already removed from the list
by BRPOP and never reached the unacked set, so nothing redelivers it. Well-formed
envelopes go on unchanged; Celery itself then refuses disallowed content types (pickle,
YAML) and unregistered task names.

Used for ``redis://`` and ``rediss://`` brokers, and as :class:`SentinelTransport` for
``sentinel://`` ones (see :mod:`falq.shared.engine.celery_app`)::

    app.conf.broker_transport = "falq.shared.engine.broker:Transport"
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from falq.shared.errors import is_redis_oom
from falq.shared.redisconn import SentinelConnection, SentinelSSLConnection

log = logging.getLogger("falq.broker")

#: ``broker_transport`` value for Celery.
TRANSPORT = "falq.shared.engine.broker:Transport"


class MalformedMessage(ValueError):
    """A queue item that is not a kombu envelope."""


def problem_with(payload: Any) -> str | None:
    """Why ``payload`` (a decoded queue item) is not a kombu envelope, or None if it is one."""
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "no 'properties' object"
    if not isinstance(props.get("delivery_tag"), str | int):
        return "no 'properties.delivery_tag'"
    info = props.get("delivery_info")
    # kombu's QoS files every delivered message under its exchange and routing key.
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "no 'properties.delivery_info' with exchange and routing_key"
    if not isinstance(payload.get("headers", {}), dict):
        return "'headers' is not an object"
    body = payload.get("body")
    if not isinstance(body, str):
        return "'body' is not a string"
    if props.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "'body' is not valid base64"
    return None


class QoS(kombu_redis.QoS):
    """kombu's unacked bookkeeping, riding out a Redis at ``maxmemory`` (``noeviction``).

    Stock kombu ends the worker ("Unrecoverable error: OutOfMemoryError") when Redis is full:
    its periodic restore sweep takes a lock with ``SET NX``, and recording a message just
    popped by BRPOP as unacked is a MULTI that Redis refuses. Here the sweep is skipped until
    the next tick, and recording the popped message is retried with backoff (up to a
    visibility timeout) instead of dropping it: the worker keeps running its jobs.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        delay, end = 0.1, time.monotonic() + float(self.visibility_timeout)
        while True:
            try:
                super().append(message, delivery_tag)
                return
            except redis.RedisError as exc:
                if not is_redis_oom(exc) or time.monotonic() > end:
                    raise
                if delay == 0.1:
                    log.warning("Redis memory is full: holding a fetched message until it can be recorded")
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().restore_visible(*args, **kwargs)
        except redis.RedisError as exc:
            if not is_redis_oom(exc):
                raise
            log.warning("Redis memory is full: unacked-message sweep skipped until the next tick")
            return None


class Channel(kombu_redis.Channel):
    """Drops undecodable items popped by BRPOP instead of letting them end the worker."""

    QoS = QoS

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)
        except MalformedMessage as exc:
            log.error("dropped a malformed message from the broker queue: %s", exc)
            return True
        except json.JSONDecodeError as exc:
            log.error("dropped a message from the broker queue that is not JSON (%d characters)", len(exc.doc))
            return True


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = problem_with(message)
        if problem is not None:
            raise MalformedMessage(f"{problem} (queue {queue})")
        super()._deliver(message, queue)


#: ``broker_transport`` value for Celery with a ``sentinel://`` broker.
SENTINEL_TRANSPORT = "falq.shared.engine.broker:SentinelTransport"


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (asks the sentinels for the master) with :class:`Channel`'s drop,
    on connections closed when a read is interrupted (see :class:`~falq.shared.redisconn.SentinelConnection`)."""

    connection_class = SentinelConnection
    connection_class_ssl = SentinelSSLConnection  # type: ignore[assignment]


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport, dropping malformed messages like :class:`Transport`."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
