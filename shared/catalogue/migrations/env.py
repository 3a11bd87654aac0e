"""Alembic environment of the catalogue: always run programmatically, on the connection that
:func:`falq.shared.catalogue.engine.upgrade` hands over in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# SQLite cannot ALTER most things in place: batch mode copies the table when it must.
context.configure(connection=connection, target_metadata=None,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
