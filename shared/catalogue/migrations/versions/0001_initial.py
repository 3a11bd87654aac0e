"""The jobs table, its time/state/endpoint/tenant/batch indexes and prompt full-text search.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = ("queued", "submitting", "in_queue", "in_progress", "mirroring", "completed", "failed", "cancelled")


def upgrade() -> None:
    js = sa.JSON().with_variant(JSONB(), "postgresql")
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, server_default="default"),
        sa.Column("batch_id", sa.String(128)),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("lane", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("negative_prompt", sa.Text),
        sa.Column("seed", sa.BigInteger),
        sa.Column("input", js, nullable=False),
        sa.Column("metadata", js, nullable=False),
        sa.Column("outputs", js, nullable=False),
        sa.Column("submissions", js, nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("errors", js, nullable=False),
        sa.Column("error_type", sa.String(64)),
        sa.Column("moderation", js),
        sa.Column("cost_estimate", sa.Double, nullable=False),
        sa.Column("cost_billed", sa.Double),
        sa.Column("cost_source", sa.String(32), nullable=False),
        *(sa.Column(f"{s}_at", sa.Double) for s in STATES),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.Column("inference_time", sa.Double),
        sa.Column("queue_wait", sa.Double),
        sa.Column("logs", js, nullable=False),
        sa.Column("parents", js, nullable=False),
        sa.Column("idempotency_key", sa.String(256)),
        sa.Column("callback_host", sa.String(256)),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("archived_at", sa.Double, nullable=False),
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_index("ix_jobs_endpoint_created", "jobs", ["endpoint", "created_at"])
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant", "created_at"])
    op.create_index("ix_jobs_batch", "jobs", ["batch_id"])
    if op.get_bind().dialect.name == "postgresql":
        # Full-text search on the prompt: the query uses the very same expression.
        op.execute("CREATE INDEX ix_jobs_prompt_fts ON jobs USING gin (to_tsvector('english', coalesce(prompt, '')))")
    else:
        # FTS5 over jobs.prompt (external content: the text lives once, in jobs), kept by triggers.
        op.execute("CREATE VIRTUAL TABLE jobs_fts USING fts5(prompt, content='jobs', content_rowid='rowid', "
                   "tokenize='porter unicode61')")
        op.execute("""CREATE TRIGGER jobs_fts_ai AFTER INSERT ON jobs BEGIN
            INSERT INTO jobs_fts(rowid, prompt) VALUES (new.rowid, new.prompt); END""")
        op.execute("""CREATE TRIGGER jobs_fts_ad AFTER DELETE ON jobs BEGIN
            INSERT INTO jobs_fts(jobs_fts, rowid, prompt) VALUES ('delete', old.rowid, old.prompt); END""")
        op.execute("""CREATE TRIGGER jobs_fts_au AFTER UPDATE OF prompt ON jobs BEGIN
            INSERT INTO jobs_fts(jobs_fts, rowid, prompt) VALUES ('delete', old.rowid, old.prompt);
            INSERT INTO jobs_fts(rowid, prompt) VALUES (new.rowid, new.prompt); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name in ("jobs_fts_ai", "jobs_fts_ad", "jobs_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS jobs_fts")
    op.drop_table("jobs")
