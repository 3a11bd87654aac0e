"""Where a job's price came from: ``unit_price``, ``price_source``, ``billable_units``.

``price_source`` is ``fal_pricing_api`` (the account's price, :mod:`falq.shared.spend.pricing`) or
``list_price_fallback`` (the configured list price: fal's pricing API was unreachable); rows
archived before this revision have NULLs (their cost was computed at the list price).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("unit_price", sa.Double))
        batch.add_column(sa.Column("price_source", sa.String(32)))
        batch.add_column(sa.Column("billable_units", sa.Double))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("billable_units")
        batch.drop_column("price_source")
        batch.drop_column("unit_price")
