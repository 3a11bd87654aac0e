"""``fal_webhook`` on submit: call the caller back, in fal's webhook shape, when the job ends.

A caller that came through the fal protocol (``POST /{endpoint}?fal_webhook=URL``, or
``fal_webhook`` on ``POST /v1/jobs``) expects fal's payload (``request_id``,
``gateway_request_id``, ``status`` OK/ERROR, ``payload``, ``error``) with presigned S3 URLs
in it. The gateway only checks the URL here and puts it in the job's record
(``fal_webhook``) when the job is created; delivery is the one outbox's:

* the save that makes the job terminal enters it in ``{p}:outbox`` in the same Lua script
  (:mod:`falq.shared.callbacks.outbox`), so no finished job is without its pending webhook, whatever
  dies afterwards (a gateway, or the worker that finished the job);
* every worker's delivery loop (:mod:`falq.workers.callbacks.sender`) claims due entries, renders
  :func:`falq.shared.fal.shapes.fal_payload` and POSTs it through
  :func:`falq.shared.egress.post_json` (public addresses only unless
  ``FALQ_CALLBACK_ALLOW_PRIVATE``, the checked address, no redirects), signed with
  ``X-Falq-Signature`` when ``FALQ_CALLBACK_SECRET`` is set, with ``X-Falq-Job-Id`` and the
  idempotency id ``X-Falq-Delivery-Id``;
* a failed try is retried with backoff for ``FALQ_CALLBACK_RETRY_FOR_S`` (about two hours, as
  fal does), every try is in the delivery log (``falq callbacks log ID``), ``falq callbacks
  pending|redeliver`` apply, and the outcome is written to ``metadata["fal_webhook"]``. A
  refused target is final at once (``status: "refused"``, ``reason``).

Example::

    url = check_webhook_url(request.query_params["fal_webhook"])   # 422 if malformed
    falq.submit(endpoint, data, fal_webhook=url)                    # delivered when the job ends
"""

from __future__ import annotations

from typing import Any

from falq.shared.egress import OutboundRefused, parse_url
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.shapes import fal_payload as fal_payload  # what the receiver gets (re-exported)

#: A refused ``fal_webhook`` target (the sender's own error type).
WebhookTargetRefused = OutboundRefused


def check_webhook_url(url: Any) -> str:
    """Validate a ``fal_webhook`` value syntactically; raise :class:`InvalidInput` if bad.

    The address rules are applied, with a fresh DNS lookup, when the webhook is delivered.
    """
    try:
        parse_url(url, what="fal_webhook")
    except OutboundRefused:
        raise InvalidInput([FieldError("fal_webhook", "must be an http(s) URL without credentials")]) from None
    return str(url)
