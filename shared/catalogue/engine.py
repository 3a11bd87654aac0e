"""Connecting to the catalogue and keeping its schema current (Alembic, run programmatically).

* :func:`database_url` -- the SQLAlchemy URL from the settings: ``FALQ_DATABASE_URL``
  (``postgresql://`` and ``postgres://`` are served by psycopg 3, ``postgresql+psycopg://``),
  else the embedded SQLite file ``{FALQ_DATA_DIR}/catalogue.sqlite3``.
* :func:`make_engine` -- an engine whose every wait is bounded by ``FALQ_DATABASE_TIMEOUT_S``
  (PostgreSQL: ``connect_timeout`` and ``statement_timeout``; SQLite: the busy timeout, WAL
  journal so readers never block the writer).
* :func:`upgrade` / :func:`current` / :func:`head` -- ``falq db upgrade`` / ``falq db current``.
* :func:`check_schema` -- what workers and the gateway run when they start: an outdated
  schema raises :class:`~falq.shared.errors.CatalogueSchemaOutdated` naming ``falq db
  upgrade``, except where auto-upgrade applies (``FALQ_DATABASE_AUTO_UPGRADE``, by default the
  embedded SQLite file upgrades itself: there is no operator to run a command for it).

Example::

    engine = make_engine(database_url(settings), timeout_s=5)
    upgrade(engine)            # idempotent; serialised between processes
    current(engine)            # '0002'
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from falq.shared.errors import CatalogueSchemaOutdated, CatalogueUnavailable
from falq.shared.settings import Settings, mask_url_password

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock key serialising concurrent ``upgrade`` calls (any constant).
_PG_LOCK = 0x66616C71  # 'falq'


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the catalogue (see the module docs)."""
    url = (settings.database_url or "").strip()
    if not url:
        path = Path(os.path.expanduser(settings.data_dir)) / "catalogue.sqlite3"
        return f"sqlite:///{path}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def describe(url: str) -> str:
    """The URL for messages and logs: the password masked."""
    return mask_url_password(url)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for another database or ``:memory:``)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str, *, timeout_s: float = 10.0, pool_size: int = 4) -> Engine:
    """An engine for ``url`` with every wait bounded by ``timeout_s`` (see the module docs)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            with contextlib.suppress(OSError):  # else connecting fails: an outage, reported as one
                path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": timeout_s}, pool_pre_ping=False)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the archiver, nor it them
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash in WAL mode
            cur.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": max(1, int(timeout_s)),
                        "options": f"-c statement_timeout={int(timeout_s * 1000)}"}
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=pool_size,
                            max_overflow=pool_size, pool_timeout=timeout_s, pool_recycle=1800)


def _config(conn: sa.Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision this falq ships."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    rev = ScriptDirectory.from_config(cfg).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.DBAPIError as exc:
        raise unavailable(engine, exc) from None


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision``; returns the revision reached. Idempotent, and
    safe to run from several processes at once (a file lock on SQLite, an advisory lock on
    PostgreSQL)."""
    from alembic import command

    try:
        with _migration_lock(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            command.upgrade(_config(conn), revision)
    except sa.exc.DBAPIError as exc:
        raise unavailable(engine, exc) from None
    return current(engine)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    path = sqlite_path(str(engine.url.render_as_string(hide_password=False)))
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(f"{path}.lock", "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise unavailable(engine, exc) from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def auto_upgrades(settings: Settings, url: str) -> bool:
    """Whether a starting worker or gateway applies the migrations itself."""
    mode = settings.database_auto_upgrade
    return mode == "always" or (mode == "sqlite" and make_url(url).get_backend_name() == "sqlite")


def check_schema(engine: Engine, *, auto_upgrade: bool) -> str:
    """At start: make sure the schema is at :func:`head` (upgrading it when allowed); returns it.

    Raises :class:`CatalogueSchemaOutdated` naming ``falq db upgrade`` when it is behind (or
    ahead: an older falq on a newer database), :class:`CatalogueUnavailable` when the database
    cannot be reached.
    """
    want = head()
    have = current(engine)
    if have == want:
        return want
    if auto_upgrade:
        reached = upgrade(engine)
        if reached == want:
            return want
        have = reached
    where = describe(engine.url.render_as_string(hide_password=True))
    raise CatalogueSchemaOutdated(
        f"the catalogue at {where} is at schema revision {have or 'none'}, this falq needs {want}: "
        f"run `falq db upgrade` (with the same FALQ_DATABASE_URL)")


def unavailable(engine: Engine, exc: BaseException) -> CatalogueUnavailable:
    """A :class:`CatalogueUnavailable` for a driver error, without the URL's password."""
    where = engine.url.render_as_string(hide_password=True)
    first = str(getattr(exc, "orig", exc) or type(exc).__name__).strip().splitlines()
    return CatalogueUnavailable(f"catalogue {where} unavailable: {type(exc).__name__}: "
                                f"{(first[0] if first else '')[:300]}")
