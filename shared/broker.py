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

Used for ``redis://`` and ``rediss://`` brokers (see :mod:`falq.workers.app`)::

    app.conf.broker_transport = "falq.shared.broker:Transport"
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("falq.broker")

#: ``broker_transport`` value for Celery.
TRANSPORT = "falq.shared.broker:Transport"


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


class Channel(kombu_redis.Channel):
    """Drops undecodable items popped by BRPOP instead of letting them end the worker."""

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
