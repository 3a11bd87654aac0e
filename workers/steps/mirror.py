"""Where an image is mirrored: copy each output of fal's kept result into our bucket."""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import ValidationError

from falq.shared.errors import (
    FalBadAnswer,
    FalRequestFailed,
    FalRequestFailedTransient,
    MediaTruncated,
    PermanentError,
    RetryableError,
)
from falq.shared.fal.schemas import GenerateOutput
from falq.shared.jobs.records import JobRecord, State, StoredImage
from falq.shared.jobs.store import CancelAsked
from falq.shared.tenants.store import TenantStore, s3_prefix_of
from falq.workers.backoff import backoff_delay
from falq.workers.context import WorkerContext
from falq.workers.media.copy import TRUNCATED_TRIES, mirror_image
from falq.workers.steps.step import DONE, WAITED, Outcome, StepBase, _note


def mirror_outputs_for(ctx: WorkerContext, rec: JobRecord, *, first_try: bool = False,
                       saved: bytes | None = None) -> tuple[GenerateOutput, list[StoredImage]]:
    """Mirror every image of ``rec``'s result; idempotent.

    The result is the one saved beside the record right after COMPLETED (see
    :mod:`falq.workers.steps.follow`), so retries during an S3 outage never ask fal again. A record
    saved before that existed falls back to fal's copy; if fal no longer has it the job
    fails (:class:`~falq.shared.errors.FalResultGone`), it is never resubmitted silently.
    ``saved``: the result as the calling step itself just saved it (no read back).
    """
    kept = saved if saved is not None else ctx.store.load_result(rec.id)
    if kept is not None:
        try:
            raw = json.loads(kept)
        except ValueError:
            raise FalBadAnswer("the saved result is not JSON") from None
    else:
        assert rec.response_url
        raw = ctx.fal.result(rec.response_url).output
    try:
        output = GenerateOutput.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FalBadAnswer(f"fal's result does not match the output schema ({where}: {first['msg']})") from None
    if not output.images:
        raise FalBadAnswer("fal's result has no images")
    ctx.ensure_bucket()
    fmt = rec.input.get("output_format", "png")
    folder = rec.folder if rec.folder is not None else s3_prefix_of(
        TenantStore(ctx.store.r, prefix=ctx.settings.key_prefix), rec.tenant)
    stored = []
    for index, image in enumerate(output.images):
        key = ctx.storage.key_base(rec.endpoint, rec.id, rec.created_at, index, folder)
        stored.append(
            mirror_image(
                http=ctx.media_http,
                storage=ctx.storage,
                settings=ctx.settings,
                source_url=image.url,
                key=key,
                job_id=rec.id,
                request_id=rec.request_id,
                index=index,
                expected_format=fmt,
                check_existing=not first_try,
                sign_url=ctx.fal.sign_file_url,
            )
        )
    return output, stored


class MirrorPhase(StepBase):
    """Mirroring in a step: transient trouble is retried, a failed request starts a new attempt."""

    def _mirror(self) -> Outcome | None:
        try:
            output, images = mirror_outputs_for(self.ctx, self.rec, first_try=self.fresh_mirror,
                                                saved=self.saved_result)
        except RetryableError as exc:
            self.fresh_mirror = False
            if isinstance(exc, FalRequestFailedTransient):
                return self._failed_attempt(exc)
            self.commit(_note(exc))
            since = self.rec.timestamps.get("mirroring", 0.0)
            tries = sum(1 for e in self.rec.errors if e.at >= since)
            if isinstance(exc, MediaTruncated):
                # fal's CDN may have cut the transfer: fetch again, but an image that stays cut
                # is broken at the source (a clear failure, like any other bad image).
                cut = sum(1 for e in self.rec.errors if e.at >= since and e.type == MediaTruncated.kind)
                if cut >= TRUNCATED_TRIES:
                    return self._fail(exc, prefix=f"the image was truncated in {cut} downloads: ")
            if tries >= self.s.max_attempts * 2:
                return self._fail(exc, prefix=f"mirroring failed {tries} times: ")
            waited = self._wait(backoff_delay(tries, base_s=self.s.retry_base_s, max_s=self.s.retry_max_s,
                                              retry_after=exc.retry_after))
            return None if waited is WAITED else waited
        except FalRequestFailed as exc:  # the request itself failed (only without a saved result)
            return self._failed_attempt(exc)
        except PermanentError as exc:
            return self._fail(exc)
        # A job someone cancelled whose output fal made anyway (billed) ends cancelled, with its
        # output mirrored and listed; `falq retry` then completes it from that output. A cancel
        # the step has not heard of is asked by the completing save itself (unless_cancelled).
        def ended(end: State) -> Callable[[JobRecord], None]:
            def change(r: JobRecord) -> None:
                r.outputs = images
                r.seed = output.seed
                if end == "cancelled":
                    r.fal_outcome = "finished"
                if not r.terminal:
                    r.move(end)
            return change

        # fal's kept result JSON goes in the same save: every image is in S3.
        if self.cancel_known():
            self.commit(ended("cancelled"), allow_terminal=True, drop_result=True)
        else:
            try:
                self.commit(ended("completed"), drop_result=True, unless_cancelled=True)
            except CancelAsked:
                self.commit(ended("cancelled"), allow_terminal=True, drop_result=True)
        self.ctx.notify_finished(self.rec)
        return DONE
