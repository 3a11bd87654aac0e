"""The catalogue's tables as SQLAlchemy Core objects (one definition for PostgreSQL and SQLite).

One row per job that ended (completed, failed or cancelled), keyed by the job id. Times are
unix seconds (UTC) in ``DOUBLE PRECISION`` columns: exact round trips of the record's own
floats, the same comparisons on both dialects, and ``to_timestamp(x)`` / ``datetime(x,
'unixepoch')`` to read them as dates. ``version`` is the record version archived: an upsert
never replaces a row with an older version of the same job.

The indexes answer the questions people ask (see the migrations for the dialect-specific
ones): time (``created_at``, ``finished_at``), state, endpoint and tenant (each with time),
batch, a metadata key (PostgreSQL: GIN on ``metadata``; SQLite: the ``job_meta`` side table
kept by triggers) and prompt text (PostgreSQL: the stored, GIN-indexed generated column
``prompt_tsv`` = ``to_tsvector('english', prompt)``, not declared here since it is never
written; SQLite: the FTS5 table ``jobs_fts`` kept by triggers).

Example::

    from sqlalchemy import select
    with engine.connect() as conn:
        conn.execute(select(jobs.c.id).where(jobs.c.state == "failed")).all()
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Double, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

#: JSON on SQLite, JSONB on PostgreSQL (indexable with GIN, ``@>`` containment).
JSONType = JSON().with_variant(JSONB(), "postgresql")

#: The record states that get a timestamp column each (``{state}_at``).
STATE_COLUMNS = ("queued", "submitting", "in_queue", "in_progress", "mirroring", "completed", "failed",
                 "cancelled")

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False, server_default="default"),
    Column("batch_id", String(128)),
    Column("endpoint", String(200), nullable=False),
    Column("lane", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("prompt", Text),
    Column("negative_prompt", Text),
    Column("seed", BigInteger),
    #: The validated input (data URIs summarised, URL query strings dropped: they may sign).
    Column("input", JSONType, nullable=False),
    Column("metadata", JSONType, nullable=False),
    #: [{index, bucket, key, sha256, size, content_type, width, height, source_host}]
    Column("outputs", JSONType, nullable=False),
    #: fal's request ids: [{attempt, request_id, submitted_at}]
    Column("submissions", JSONType, nullable=False),
    Column("request_id", String(128)),
    Column("attempts", Integer, nullable=False),
    #: [{type, message, retryable, attempt, at}]
    Column("errors", JSONType, nullable=False),
    Column("error_type", String(64)),
    Column("moderation", JSONType),
    Column("cost_estimate", Double, nullable=False),
    Column("cost_billed", Double),
    Column("cost_source", String(32), nullable=False),
    #: The unit price the costs used, and where it came from (migration 0004, falq.shared.spend.pricing).
    Column("unit_price", Double),
    Column("price_source", String(32)),
    Column("billable_units", Double),
    #: How fal ended a request falq asked it to cancel (migration 0005): ``finished`` (billed, images
    #: kept in ``outputs``), ``stopped``, ``removed``, ``unknown``; NULL when no cancel reached fal.
    Column("fal_outcome", String(16)),
    *(Column(f"{s}_at", Double) for s in STATE_COLUMNS),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("finished_at", Double),
    Column("inference_time", Double),
    Column("queue_wait", Double),
    Column("logs", JSONType, nullable=False),
    Column("parents", JSONType, nullable=False),
    Column("idempotency_key", String(256)),
    #: Only the host of the callback URL (its path or query may carry a token).
    Column("callback_host", String(256)),
    Column("version", Integer, nullable=False),
    Column("archived_at", Double, nullable=False),
    Index("ix_jobs_created_at", "created_at"),
    Index("ix_jobs_finished_at", "finished_at"),
    Index("ix_jobs_state_created", "state", "created_at"),
    Index("ix_jobs_endpoint_created", "endpoint", "created_at"),
    Index("ix_jobs_tenant_created", "tenant", "created_at"),
    Index("ix_jobs_batch", "batch_id"),
)

#: SQLite only (migration 0002): one row per metadata key of a job, kept by triggers on
#: ``jobs``; PostgreSQL answers the same question from a GIN index on ``jobs.metadata``.
job_meta = Table(
    "job_meta",
    metadata,
    Column("job_id", String(64), nullable=False),
    Column("key", Text, nullable=False),
    Column("value", Text),
)
