"""The catalogue: every job that ended, kept in SQL (PostgreSQL in production, SQLite embedded).

* :mod:`.schema` -- the tables (SQLAlchemy Core); :mod:`.engine` -- URLs, engines, Alembic
  migrations (``falq db upgrade``); :mod:`.rows` -- record <-> row <-> ``job.json``;
  :mod:`.store` -- upsert, lookup, search, spend reports; :mod:`.search` -- the same filters
  in memory and the merge of live and archived records; :mod:`.revive` -- an archived job
  written back into Redis, for ``falq retry`` of a job Redis forgot; :mod:`.registry` -- which
  catalogue each host uses, and the one shared history archivers write (``falq db shared``).

Names are imported on first use, so ``from falq.shared.catalogue.search import ...`` (what
producers import at start) does not load SQLAlchemy. How jobs get here and why it is
crash-safe: docs/internals/catalogue.md.

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
