"""The catalogue: every job that ended, kept in SQL (PostgreSQL in production, SQLite embedded).

Redis holds live jobs; once a job ends (completed, failed or cancelled) the save that makes it
terminal also enqueues it on the Redis stream ``{p}:archive`` (:mod:`falq.shared.jobstore`).
The workers' archiver (:mod:`falq.workers.archive`) upserts it here, writes ``job.json``
beside its images, and only then gives the Redis copy its short TTL (``FALQ_ARCHIVED_TTL_S``).
Readers (``falq status``, ``falq jobs``, ``Falq.lookup``, the gateway) fall back to the
catalogue for jobs Redis no longer has.

* :mod:`.schema` -- the tables (SQLAlchemy Core); :mod:`.engine` -- URLs, engines, Alembic
  migrations (``falq db upgrade``); :mod:`.rows` -- record <-> row <-> ``job.json``;
  :mod:`.store` -- upsert, lookup, search, spend reports; :mod:`.search` -- the same filters
  in memory and the merge of live and archived records; :mod:`.revive` -- an archived job
  written back into Redis, for ``falq retry`` of a job Redis forgot; :mod:`.registry` -- which
  catalogue each host uses, and the one shared history archivers write (``falq db shared``).

Names are imported on first use, so ``from falq.shared.catalogue.search import ...`` (what
producers import at start) does not load SQLAlchemy.

Example::

    from falq.shared.catalogue import CatalogueQuery, get_catalogue

    cat = get_catalogue(settings)
    cat.search(CatalogueQuery(text="lighthouse", since=time.time() - 86400, limit=20))
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "check_schema": "engine", "current": "engine", "database_url": "engine", "head": "engine",
    "make_engine": "engine", "upgrade": "engine",
    "job_doc": "rows", "record_from_row": "rows", "row_from_doc": "rows", "row_from_record": "rows",
    "GROUP_KEYS": "store", "Catalogue": "store", "CatalogueQuery": "store", "get_catalogue": "store",
    "reset_catalogues": "store",
    "merge_newest": "search", "record_matches": "search",
    "lost_in": "rows",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
