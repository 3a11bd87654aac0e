"""Reading and writing the catalogue: idempotent upserts, lookups, searches, spend reports.

Every method raises :class:`~falq.shared.errors.CatalogueUnavailable` when the database is
down or slow (bounded by ``FALQ_DATABASE_TIMEOUT_S``), never a driver's own exception.

Example::

    cat = get_catalogue(settings)
    cat.upsert([row_from_record(rec, archived_at=time.time())])     # again: no change
    cat.get(rec.id)                                                 # the JobRecord
    cat.search(CatalogueQuery(text="red fox", endpoint=ep, since=time.time() - 7 * 86400))
    cat.spend(["day", "endpoint"], since=time.time() - 30 * 86400)
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from falq.shared.catalogue.engine import auto_upgrades, check_schema, database_url, make_engine, unavailable
from falq.shared.catalogue.rows import COLUMNS, record_from_row
from falq.shared.catalogue.schema import jobs
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.jobs.records import JobRecord
from falq.shared.settings import Settings

#: The ``--by`` keys of :meth:`Catalogue.spend` (plus ``metadata.KEY``).
GROUP_KEYS = ("day", "month", "endpoint", "tenant", "batch", "state", "lane")
_WORD = re.compile(r"\w+", re.UNICODE)
_META_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass(frozen=True)
class CatalogueQuery:
    """A search of the catalogue, newest first. ``since`` inclusive, ``until`` exclusive (unix s,
    on ``created_at``); ``text``: every word must be in the prompt (stemmed, English)."""

    state: str | None = None
    endpoint: str | None = None
    tenant: str | None = None
    batch_id: str | None = None
    since: float | None = None
    until: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    limit: int = 100


class Catalogue:
    """The catalogue behind one engine.

    Parameters:
        engine: from :func:`falq.shared.catalogue.engine.make_engine`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # --- write ---------------------------------------------------------------------------------
    def upsert(self, rows: list[dict[str, Any]]) -> int:
        """Insert or update rows by id in one transaction; a row never replaces a newer version
        of the same job. Returns how many rows were given."""
        if not rows:
            return 0
        ins = (postgresql.insert(jobs) if self.dialect == "postgresql" else sqlite.insert(jobs))
        stmt = ins.on_conflict_do_update(
            index_elements=[jobs.c.id],
            set_={c: ins.excluded[c] for c in COLUMNS if c != "id"},
            where=jobs.c.version <= ins.excluded.version,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, [{c: r.get(c) for c in COLUMNS} for r in rows])
        except sa.exc.OperationalError as exc:
            raise unavailable(self.engine, exc) from None
        except sa.exc.InterfaceError as exc:
            raise unavailable(self.engine, exc) from None
        return len(rows)

    # --- read ----------------------------------------------------------------------------------
    def get_row(self, job_id: str, *, tenant: str | None = None) -> dict[str, Any] | None:
        """The row of ``job_id`` (only if it belongs to ``tenant``, when given), or None."""
        if "\x00" in job_id or (tenant is not None and "\x00" in tenant):
            return None  # no stored id holds a NUL (and PostgreSQL refuses it as a parameter)
        q = sa.select(jobs).where(jobs.c.id == job_id)
        if tenant is not None:
            q = q.where(jobs.c.tenant == tenant)
        row = self._fetch(q)
        return dict(row[0]) if row else None

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord | None:
        """The record of ``job_id`` as archived, or None."""
        row = self.get_row(job_id, tenant=tenant)
        return record_from_row(row) if row else None

    def search_rows(self, q: CatalogueQuery) -> list[dict[str, Any]]:
        return [dict(r) for r in self._fetch(self.select(q))]

    def search(self, q: CatalogueQuery) -> list[JobRecord]:
        """The matching records, newest first."""
        return [record_from_row(r) for r in self.search_rows(q)]

    def select(self, q: CatalogueQuery, columns: Any = None) -> sa.Select[Any]:
        """The SELECT of a search (``explain`` shows its plan)."""
        stmt = sa.select(*(columns if columns is not None else [jobs]))
        given = [q.state, q.endpoint, q.tenant, q.batch_id, *q.metadata.keys(), *q.metadata.values()]
        if any(isinstance(v, str) and "\x00" in v for v in given):
            return stmt.where(sa.false()).limit(q.limit)  # nothing stored holds a NUL
        if q.state:
            stmt = stmt.where(jobs.c.state == q.state)
        if q.endpoint:
            stmt = stmt.where(jobs.c.endpoint == q.endpoint)
        if q.tenant is not None:
            stmt = stmt.where(jobs.c.tenant == q.tenant)
        if q.batch_id:
            stmt = stmt.where(jobs.c.batch_id == q.batch_id)
        if q.since is not None:
            stmt = stmt.where(jobs.c.created_at >= q.since)
        if q.until is not None:
            stmt = stmt.where(jobs.c.created_at < q.until)
        for key, want in q.metadata.items():
            stmt = stmt.where(self._meta_filter(key, want))
        if q.text and q.text.strip():
            stmt = stmt.where(self._text_filter(q.text))
        return stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(q.limit)

    def explain(self, q: CatalogueQuery) -> str:
        """The database's query plan of :meth:`search` (``EXPLAIN ANALYZE`` on PostgreSQL)."""
        stmt = self.select(q)
        compiled = stmt.compile(self.engine, compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if self.dialect == "postgresql" else "EXPLAIN QUERY PLAN "
        rows = self._fetch(sa.text(prefix + str(compiled)))
        return "\n".join(" ".join(str(v) for v in r.values()) for r in rows)

    def _text_filter(self, text: str) -> Any:
        words = _WORD.findall(text)
        if self.dialect == "postgresql":
            # jobs.prompt_tsv: to_tsvector('english', prompt), stored and GIN-indexed (migration 0003).
            return sa.text("jobs.prompt_tsv @@ plainto_tsquery('english', :q)").bindparams(q=" ".join(words))
        match = " ".join('"' + w.replace('"', "") + '"' for w in words) or '""'
        return sa.text("jobs.rowid IN (SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH :q)").bindparams(q=match)

    def _meta_filter(self, key: str, want: str) -> Any:
        values: list[Any] = [want]
        try:
            parsed = json.loads(want)
        except ValueError:
            parsed = want
        if parsed != want:
            values.append(parsed)
        if self.dialect == "postgresql":
            col = jobs.c["metadata"]
            return sa.or_(*(col.op("@>")(sa.cast(sa.literal(json.dumps({key: v})), JSONB)) for v in values))
        texts = sorted({want, *(json.dumps(v) for v in values if not isinstance(v, str))})
        if True in values:
            texts.append("1")
        if False in values:
            texts.append("0")
        return sa.text(f"jobs.id IN (SELECT job_id FROM job_meta WHERE key = :mk AND value IN "
                       f"({', '.join(f':mv{i}' for i in range(len(texts)))}))").bindparams(
            mk=key, **{f"mv{i}": t for i, t in enumerate(texts)})

    # --- reports ---------------------------------------------------------------------------------
    def spend(self, by: list[str], *, since: float | None = None, until: float | None = None,
              tenant: str | None = None) -> list[dict[str, Any]]:
        """Spend grouped by ``by`` (``GROUP_KEYS`` and ``metadata.KEY``), as one SQL GROUP BY.

        Each row: the group's keys, ``jobs``, ``completed``, ``images``, ``estimate`` (the
        price-table estimate of completed jobs), ``billed`` (what fal reported) and ``spend``
        (billed where fal said, else the estimate, for completed jobs). Times are when the job
        finished (UTC)."""
        errors = [FieldError("by", f"unknown key {k!r}: use {', '.join(GROUP_KEYS)} or metadata.KEY")
                  for k in by if k not in GROUP_KEYS and not (k.startswith("metadata.")
                                                              and _META_KEY.match(k[9:]))]
        if not by:
            errors.append(FieldError("by", "name at least one key"))
        if errors:
            raise InvalidInput(errors)
        when = sa.func.coalesce(jobs.c.finished_at, jobs.c.created_at)
        exprs = [self._group_expr(k, when).label(k) for k in by]
        done = jobs.c.state == "completed"
        spend = sa.case((done, sa.func.coalesce(jobs.c.cost_billed, jobs.c.cost_estimate)),
                        else_=sa.func.coalesce(jobs.c.cost_billed, 0.0))
        images = sa.func.json_array_length(jobs.c.outputs) if self.dialect == "sqlite" else \
            sa.func.jsonb_array_length(jobs.c.outputs)
        stmt = sa.select(
            *exprs,
            sa.func.count().label("jobs"),
            sa.func.sum(sa.case((done, 1), else_=0)).label("completed"),
            sa.func.sum(images).label("images"),
            sa.func.sum(sa.case((done, jobs.c.cost_estimate), else_=0.0)).label("estimate"),
            sa.func.sum(sa.func.coalesce(jobs.c.cost_billed, 0.0)).label("billed"),
            sa.func.sum(spend).label("spend"),
        )
        if since is not None:
            stmt = stmt.where(when >= since)
        if until is not None:
            stmt = stmt.where(when < until)
        if tenant is not None:
            stmt = stmt.where(jobs.c.tenant == tenant)
        stmt = stmt.group_by(*exprs).order_by(*(e.asc().nulls_last() for e in exprs))  # alike on both dialects
        out = []
        for r in self._fetch(stmt):
            d = dict(r)
            for k in ("jobs", "completed", "images"):
                d[k] = int(d[k] or 0)
            for k in ("estimate", "billed", "spend"):
                d[k] = round(float(d[k] or 0.0), 6)
            out.append(d)
        return out

    def _group_expr(self, key: str, when: Any) -> Any:
        if key in ("day", "month"):
            if self.dialect == "postgresql":
                fmt = "YYYY-MM-DD" if key == "day" else "YYYY-MM"
                return sa.func.to_char(sa.func.timezone("UTC", sa.func.to_timestamp(when)), fmt)
            return sa.func.strftime("%Y-%m-%d" if key == "day" else "%Y-%m", when, "unixepoch")
        if key.startswith("metadata."):
            return jobs.c["metadata"][key[9:]].as_string()
        return {"endpoint": jobs.c.endpoint, "tenant": jobs.c.tenant, "batch": jobs.c.batch_id,
                "state": jobs.c.state, "lane": jobs.c.lane}[key]

    def count(self) -> int:
        return int(self._fetch(sa.select(sa.func.count()).select_from(jobs))[0]["count_1"])

    def _fetch(self, stmt: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).mappings())
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise unavailable(self.engine, exc) from None

    def dispose(self) -> None:
        self.engine.dispose()


_catalogues: dict[str, Catalogue] = {}
_lock = threading.Lock()


def get_catalogue(settings: Settings, *, check: bool = False) -> Catalogue:
    """The process's :class:`Catalogue` for ``settings`` (one engine per URL).

    With ``check`` the schema is checked first (and upgraded where auto-upgrade applies, see
    :func:`falq.shared.catalogue.engine.check_schema`): what workers and the gateway do at start."""
    url = database_url(settings)
    with _lock:
        cat = _catalogues.get(url)
        fresh = cat is None
        if cat is None:
            cat = Catalogue(make_engine(url, timeout_s=settings.database_timeout_s))
            _catalogues[url] = cat
    if check or (fresh and auto_upgrades(settings, url)):
        # A reader of the embedded SQLite file may come before any worker: it creates the schema.
        check_schema(cat.engine, auto_upgrade=auto_upgrades(settings, url))
    return cat


def reset_catalogues() -> None:
    """Dispose of the cached engines (tests that change databases)."""
    with _lock:
        for cat in _catalogues.values():
            cat.dispose()
        _catalogues.clear()
