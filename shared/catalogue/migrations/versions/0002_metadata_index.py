"""Index a metadata key: GIN on jobs.metadata (PostgreSQL), the job_meta side table (SQLite).

Rows archived before this revision are indexed too (the SQLite side table is back-filled).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # jsonb_path_ops: smaller and faster for `metadata @> '{"k": "v"}'`, the one query asked.
        op.execute("CREATE INDEX ix_jobs_metadata ON jobs USING gin (metadata jsonb_path_ops)")
        return
    op.create_table(
        "job_meta",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
    )
    op.create_index("ix_job_meta_key_value", "job_meta", ["key", "value"])
    op.create_index("ix_job_meta_job", "job_meta", ["job_id"])
    # json_each's value is the text of a string and the JSON of anything else.
    fill = "INSERT INTO job_meta(job_id, key, value) SELECT {id}, key, CAST(value AS TEXT) FROM json_each({meta})"
    op.execute(f"""CREATE TRIGGER job_meta_ai AFTER INSERT ON jobs BEGIN
        {fill.format(id="new.id", meta="new.metadata")}; END""")
    op.execute("""CREATE TRIGGER job_meta_ad AFTER DELETE ON jobs BEGIN
        DELETE FROM job_meta WHERE job_id = old.id; END""")
    op.execute(f"""CREATE TRIGGER job_meta_au AFTER UPDATE OF metadata ON jobs BEGIN
        DELETE FROM job_meta WHERE job_id = old.id;
        {fill.format(id="new.id", meta="new.metadata")}; END""")
    op.execute("INSERT INTO job_meta(job_id, key, value) SELECT jobs.id, j.key, CAST(j.value AS TEXT) "
               "FROM jobs, json_each(jobs.metadata) AS j")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_jobs_metadata")
        return
    for name in ("job_meta_ai", "job_meta_ad", "job_meta_au"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("job_meta")
