"""Alembic migrations of the catalogue (run by :func:`falq.shared.catalogue.engine.upgrade`)."""
