"""falq's exception hierarchy.

Errors are types, never strings matched later. Everything falq raises on purpose derives
from :class:`FalqError`; most of it falls in one of three families:

* :class:`InvalidInput` -- the caller sent something falq will not accept. Nothing was
  enqueued or changed. Carries one :class:`FieldError` per problem.
* :class:`RetryableError` -- a transient failure (network, 429, 5xx, S3 hiccup). The
  same step may be tried again; ``retry_after`` is a server hint in seconds, if any.
* :class:`PermanentError` -- trying again cannot help (422 from fal, 401/403, a hostile
  answer). The job ends ``failed`` with this message.

The whole tree (``tests/unit/test_errors.py`` checks it against the classes: every
error's direct bases are the one it hangs from plus those named after "also"; a name in
brackets is defined in that module, every other one here)::

    * FalqError
      - InvalidInput                     (also ValueError)
      - RetryableError
        - FalTransientError              (also FalError)
          - FalIngressError
          - FalResultError
        - FalAccountLocked               (also FalError)
        - StorageTransientError
          - MediaTruncated
        - RedisMemoryFull
        - CatalogueUnavailable
        - OutboundUnresolved             [falq.shared.egress]
        - JwksUnavailable                [falq.shared.fal.webhook_verify]
        - SubmitInterrupted              [falq.workers.steps.submit]
        - PricingUnavailable             [falq.shared.spend.pricing]
        - BillingUnavailable             [falq.shared.spend.reconcile]
      - PermanentError
        - FalRejected                    (also FalError)
        - FalAuthError                   (also FalError)
        - FalContentPolicy               (also FalError)
        - FalSubmitUncertain             (also FalError)
        - FalResultGone                  (also FalError)
        - FalStartTimeout                (also FalError)
        - FalBadAnswer                   (also FalError)
        - FalResultUnavailable           (also FalError)
        - SubmitRefused                  (also FalError)
        - MirrorRejected
          - MediaAccessDenied
        - StorageError
          - ObjectMissing
        - ParentFailed
        - DeadlineExceeded
        - AttemptsExhausted
        - StepCrashed
        - InvalidTransition
        - OutboundRefused                [falq.shared.egress]
        - WebhookRejected                [falq.shared.fal.webhook_verify]
        - GatewayConfigError             [falq.gateway.config]
        - SigningKeyInvalid              [falq.shared.fal.webhook_sign]
      - FalError
        - FalRequestFailed
          - FalRequestFailedTransient    (also RetryableError)
          - FalRequestFailedPermanent    (also PermanentError)
      - JobNotFound                      (also KeyError)
        - BatchNotFound
      - TenantNotFound                   (also KeyError)
      - JobTimeout                       (also TimeoutError)
      - CatalogueSchemaOutdated
      - Forbidden                        [falq.gateway.auth]
      - Unprocessable                    [falq.gateway.core]

Internal signals: control flow inside one part of falq, caught by the code that calls the
raiser, never raised to a user, so they stay beside that code and outside the tree::

    ~ Stop                               [falq.workers.steps.step]
    ~ Fenced                             [falq.workers.steps.step]
    ~ Conflict                           [falq.shared.jobs.store]
    ~ LeaseLost                          [falq.shared.jobs.store]
    ~ CancelAsked                        [falq.shared.jobs.store]
    ~ StreamUnsupported                  [falq.shared.fal.client]
    ~ MalformedMessage                   [falq.shared.engine.broker]
    ~ NoPreview                          [falq.gateway.console.thumbs]

The errors a user of :class:`falq.Falq` catches are exported from ``falq`` itself.

Example::

    from falq import Falq, InvalidInput

    try:
        Falq().generate(prompt="")
    except InvalidInput as exc:
        for err in exc.errors:
            print(err.field, err.message)   # prompt  must not be empty
"""

from __future__ import annotations

from dataclasses import dataclass


class FalqError(Exception):
    """Base class of every error falq raises deliberately."""

    #: Short machine-readable name recorded on jobs (``error.type``).
    kind: str = "error"

    @property
    def retryable(self) -> bool:
        return isinstance(self, RetryableError)


@dataclass(frozen=True)
class FieldError:
    """One rejected field: where (dotted path) and which rule, in plain words."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidInput(FalqError, ValueError):
    """Input rejected before anything was enqueued.

    Parameters:
        errors: one entry per violated rule.
        where: optional prefix such as ``"line 12"`` for bulk files.
    """

    kind = "invalid_input"

    def __init__(self, errors: list[FieldError], where: str = "") -> None:
        self.errors = list(errors)
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + "; ".join(str(e) for e in self.errors))


class RetryableError(FalqError):
    """A transient failure; the step may be retried.

    Parameters:
        message: what happened (never contains secrets).
        retry_after: seconds the server asked us to wait, if it said so.
        reason: short label used in metrics (``http_429``, ``transport``, ...).
    """

    kind = "retryable"

    def __init__(self, message: str, *, retry_after: float | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason or self.kind


class PermanentError(FalqError):
    """A failure that retrying cannot fix; the job fails with this message."""

    kind = "permanent"


# --- fal -------------------------------------------------------------------------------


class FalError(FalqError):
    """Mixin for errors that came from talking to fal."""


class FalTransientError(RetryableError, FalError):
    """fal (or the network in front of it) failed transiently: 408/409/429/5xx, resets."""

    kind = "fal_transient"


class FalRejected(PermanentError, FalError):
    """fal refused the request for good (422 validation, 400, 404 ...).

    ``status_code`` is the HTTP code; ``detail`` is fal's own message.
    """

    kind = "fal_rejected"

    def __init__(self, message: str, *, status_code: int | None = None, detail: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class FalAuthError(PermanentError, FalError):
    """401/403: the key is wrong or lacks permission. The message names only the key's suffix."""

    kind = "fal_auth"


class FalIngressError(FalTransientError):
    """fal's edge answered 502/503/504 with an HTML page and no ``x-fal-request-id``.

    It says nothing about the request: the same call is tried again (status, result,
    cancel, or a submit, which such an answer cannot have created). Never a reason for a
    new submission. fal-client retries exactly these (``_is_ingress_error``).
    """

    kind = "fal_ingress"


class FalResultError(FalTransientError):
    """The result GET of a request fal reported COMPLETED without an error answered a 5xx
    (with or without ``x-fal-request-id``) that names no infrastructure ``error_type``.

    The request succeeded and is billed; neither official client ever submits again here
    (reference section 11.1). The same result is fetched again with backoff, for as long as
    fal keeps results (``FALQ_FAL_RESULT_RETRY_S``); never a reason for a new submission.
    """

    kind = "fal_result_error"


class FalAccountLocked(RetryableError, FalError):
    """fal refused the key's account: ``403 User is locked. Reason: Exhausted balance...``
    (or a 402). No request was created; every job of the key pauses until a top-up or
    ``falq limits set --resume``. None fails."""

    kind = "fal_account_locked"


class FalContentPolicy(PermanentError, FalError):
    """fal's content checker refused the prompt or an image (422 ``content_policy_violation``).

    Never retried (the same input fails the same way) and says nothing about the account.
    ``categories`` are fal's labels (e.g. ``["sexual"]``); ``field`` is where, e.g. ``prompt``.
    """

    kind = "content_policy"

    def __init__(self, message: str, *, categories: list[str] | None = None, field: str = "") -> None:
        super().__init__(message)
        self.categories = list(categories or [])
        self.field = field


class FalSubmitUncertain(PermanentError, FalError):
    """A submit whose answer was lost or was a 5xx fal may have sent after creating the request.

    fal-client never retries these (the request may exist and be billed). With
    ``request_id`` (the answer carried ``x-fal-request-id``) the worker follows that request;
    without, the job fails unless ``FALQ_SUBMIT_UNCERTAIN=resubmit``.
    """

    kind = "submit_uncertain"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class FalResultGone(PermanentError, FalError):
    """fal no longer has the result of a request it finished (results are kept about an
    hour, 6 minutes when 10 KB or larger, unless payload storage is on). The job fails
    with this reason; it is never resubmitted silently."""

    kind = "result_expired"


class FalStartTimeout(PermanentError, FalError):
    """No fal runner started the request within ``X-Fal-Request-Timeout``
    (``FALQ_FAL_START_TIMEOUT_S``): fal dropped it unbilled (504, timeout type ``user``)."""

    kind = "start_timeout"


class FalResultUnavailable(PermanentError, FalError):
    """fal kept answering errors for the result of a request it finished cleanly, for longer
    than it keeps results (``FALQ_FAL_RESULT_RETRY_S``). The request was billed; the job
    fails with this reason and is never submitted again by falq on its own."""

    kind = "result_unavailable"


class SubmitRefused(PermanentError, FalError):
    """Every submit of a job met answers that created nothing at fal (edge pages, 429s,
    connections never made) for longer than ``FALQ_SUBMIT_REFUSED_MAX_S``. Nothing was
    created or billed; ``falq retry`` runs the job again."""

    kind = "submit_refused"


class StepCrashed(PermanentError):
    """A step of the job raised an unexpected error ``FALQ_MAX_STEP_CRASHES`` times in a row
    (a bug, or a record falq cannot handle). The job fails with the last error instead of
    looping; a request at fal stays on the record."""

    kind = "step_crashed"


class FalBadAnswer(PermanentError, FalError):
    """fal answered something that does not follow its protocol (non-JSON, missing fields)."""

    kind = "fal_bad_answer"


class FalRequestFailed(FalError):
    """A request fal finished as COMPLETED with an ``error``.

    Whether it is worth a new attempt depends on ``error_type`` (see
    :data:`TRANSIENT_ERROR_TYPES`); the classification is done by :func:`fal_failure`.
    """

    kind = "fal_request_failed"

    def __init__(self, message: str, *, error_type: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status_code = status_code


class FalRequestFailedTransient(FalRequestFailed, RetryableError):
    kind = "fal_request_failed_transient"

    def __init__(self, message: str, *, error_type: str | None = None, status_code: int | None = None) -> None:
        RetryableError.__init__(self, message, reason=f"completed_{error_type}")
        self.error_type = error_type
        self.status_code = status_code


class FalRequestFailedPermanent(FalRequestFailed, PermanentError):
    kind = "fal_request_failed"


#: Infrastructure error types fal documents as transient (request-errors page): a new
#: attempt may succeed. Anything else reported on a COMPLETED request is final.
TRANSIENT_ERROR_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
    }
)


def fal_failure(message: str, error_type: str | None, status_code: int | None = None) -> FalqError:
    """Build the right error for a COMPLETED-with-error answer (by fal's ``error_type``)."""
    if error_type == "content_policy_violation":
        return FalContentPolicy(message)
    if error_type in TRANSIENT_ERROR_TYPES:
        return FalRequestFailedTransient(message, error_type=error_type, status_code=status_code)
    return FalRequestFailedPermanent(message, error_type=error_type, status_code=status_code)


# --- storage / mirroring -----------------------------------------------------------------


class StorageTransientError(RetryableError):
    """S3 (or the fal media host) failed transiently; mirroring is retried."""

    kind = "storage_transient"


class MediaTruncated(StorageTransientError):
    """An output image whose bytes stop before the end of the image (a JPEG without its
    end-of-image marker, a PNG without IEND, a WEBP shorter than its RIFF header says),
    although the download itself ended cleanly. fal's CDN may have cut the transfer, so the
    image is fetched again; a job whose image stays truncated fails (see
    :mod:`falq.workers.steps.mirror`). Never stored."""

    kind = "media_truncated"


class MirrorRejected(PermanentError):
    """An output image falq refuses to copy: host not allowlisted, too big, not an image."""

    kind = "mirror_rejected"


class MediaAccessDenied(MirrorRejected):
    """The media host refused the output URL without credentials (403, or 404 for a hidden
    file): fal's restricted file access. The mirror asks fal for a signed URL before giving up."""

    kind = "media_access_denied"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class StorageError(PermanentError):
    """S3 refused for good (access denied, no such bucket and creation not permitted)."""

    kind = "storage"


class ObjectMissing(StorageError):
    """The object is no longer in the bucket (deleted, expired by a lifecycle rule): the
    console shows "no longer in the bucket" instead of a broken image."""

    kind = "object_missing"


# --- jobs --------------------------------------------------------------------------------


class InvalidTransition(PermanentError):
    """A job was asked to enter a state its state may not lead to (``falq.shared.jobs.records.TRANSITIONS``):
    a bug in the caller, never retried. ``src`` and ``dst`` name the two states."""

    kind = "invalid_transition"

    def __init__(self, job_id: str, src: str, dst: str) -> None:
        super().__init__(f"job {job_id}: {src} -> {dst} is not an allowed state change")
        self.job_id, self.src, self.dst = job_id, src, dst


class JobNotFound(FalqError, KeyError):
    """No job record with this id (never existed, or expired)."""

    kind = "job_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "job not found"


class TenantNotFound(FalqError, KeyError):
    """No tenant of this name (:mod:`falq.shared.tenants.store`)."""

    kind = "tenant_not_found"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "tenant not found"


class BatchNotFound(JobNotFound):
    """No batch with this id (for this tenant); answered like a missing job (404)."""

    kind = "batch_not_found"


class ParentFailed(PermanentError):
    """A job this job's input references (``falq:JOB_ID#N``) failed, was cancelled or was
    moderated, so this job cannot run; the message names the parent (:mod:`falq.shared.batches.chains`)."""

    kind = "parent_failed"

    def __init__(self, message: str, *, parent: str = "") -> None:
        super().__init__(message)
        self.parent = parent


class DeadlineExceeded(PermanentError):
    """fal did not finish the request within the configured deadline."""

    kind = "deadline_exceeded"


class AttemptsExhausted(PermanentError):
    """Every allowed attempt failed transiently."""

    kind = "attempts_exhausted"


class JobTimeout(FalqError, TimeoutError):
    """``wait`` ran out of time; the job goes on."""

    kind = "timeout"


# --- Redis memory ---------------------------------------------------------------------------


class RedisMemoryFull(RetryableError):
    """Redis refused a write because it reached ``maxmemory`` (policy ``noeviction``).

    Raised to producers by :meth:`~falq.producers.client.Falq.submit` and ``submit_many``
    before anything half-made is left behind: a job whose record was created but whose
    broker message could not be sent is removed again. ``enqueued`` lists the
    ``(job_id, created)`` pairs of a batch that *were* fully enqueued before Redis filled
    up (empty for a single job); every other job of the call was not enqueued at all.
    """

    kind = "redis_memory_full"

    def __init__(self, message: str = "", *, enqueued: list[tuple[str, bool]] | None = None,
                 total: int = 1) -> None:
        self.enqueued = list(enqueued or [])
        done = len(self.enqueued)
        what = ("nothing was enqueued" if not done else
                f"{done} of {total} jobs were enqueued before that (see .enqueued); the other {total - done} were not")
        super().__init__(
            message or (
                "Redis memory is full: Redis refused writes because maxmemory was reached "
                f"(OOM, policy noeviction), so {what}. Free memory in Redis (lower FALQ_RECORD_TTL_S, "
                "delete old records, drain the queues) or raise its maxmemory, then submit again."
            ),
            reason="redis_oom",
        )


def is_redis_oom(exc: BaseException | None) -> bool:
    """True if ``exc`` is Redis refusing a write at ``maxmemory``, directly (redis-py's
    ``OutOfMemoryError``, or a ``ResponseError`` reading ``OOM command not allowed...``) or
    wrapped by kombu/Celery (``OperationalError`` raised *from* it, or quoting its text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.startswith("redis"):
            return True
        text = str(exc)
        if text.startswith("OOM ") or "used memory > 'maxmemory'" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class CatalogueUnavailable(RetryableError):
    """The SQL catalogue (:mod:`falq.shared.catalogue`) could not be reached or timed out.
    Jobs go on; the archiver tries again and readers answer from Redis alone."""

    kind = "catalogue_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="catalogue_unavailable")


class CatalogueSchemaOutdated(FalqError):
    """The catalogue's schema is not at the revision this falq needs: run ``falq db upgrade``."""

    kind = "catalogue_schema"
