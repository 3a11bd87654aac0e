"""The mirroring step of a job: fetch fal's result and copy each image into our bucket."""

from __future__ import annotations

from pydantic import ValidationError

from shared.errors import FalBadAnswer
from shared.records import JobRecord, StoredImage
from shared.schemas import GenerateOutput
from workers.context import WorkerContext
from workers.mirror import mirror_image


def mirror_outputs_for(ctx: WorkerContext, rec: JobRecord) -> tuple[GenerateOutput, list[StoredImage]]:
    """Fetch the result of ``rec``'s request and mirror every image; idempotent.

    The result is fetched again on every try rather than stored: with ``sync_mode`` it
    holds whole images as data URIs, which do not belong in a Redis record.
    """
    assert rec.response_url
    raw = ctx.fal.result(rec.response_url)
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
    stored = []
    for index, image in enumerate(output.images):
        key = ctx.storage.key_base(rec.endpoint, rec.id, rec.created_at, index)
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
            )
        )
    return output, stored
