"""How fal ended a request falq asked it to cancel: ``fal_outcome``.

``finished`` (fal completed it anyway: billed, its images kept in ``outputs``), ``stopped``,
``removed`` or ``unknown`` (:attr:`falq.shared.jobs.records.JobRecord.fal_outcome`); NULL when no
cancel reached fal, and on rows archived before this revision.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fal_outcome", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fal_outcome")
