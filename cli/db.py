"""``falq db``: the catalogue's database schema (Alembic migrations shipped with falq).

Examples::

    falq db upgrade                     # apply every migration (idempotent; safe while workers run)
    falq db upgrade --revision 0001     # up to one revision
    falq db current                     # the revision the database is at, and the newest one

The database is ``FALQ_DATABASE_URL`` (``postgresql://...`` or ``sqlite:///...``), else the
embedded SQLite file under ``FALQ_DATA_DIR``. Workers and the gateway refuse to start on a
PostgreSQL catalogue whose schema is behind, naming this command; the embedded SQLite file
upgrades itself (``FALQ_DATABASE_AUTO_UPGRADE``).
"""

from __future__ import annotations

import click

from falq.cli.output import EXIT_OK, EXIT_UNAVAILABLE, emit_json, fail, handle_errors


@click.group()
def db() -> None:
    """The catalogue's database: apply migrations (upgrade), show the revision (current)."""


def _engine() -> tuple[object, str]:
    from falq.shared.catalogue.engine import database_url, describe, make_engine
    from falq.shared.settings import get_settings

    settings = get_settings()
    url = database_url(settings)
    return make_engine(url, timeout_s=settings.database_timeout_s), describe(url)


@db.command()
@click.option("--revision", default="head", show_default=True, help="Upgrade up to this revision.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@handle_errors
def upgrade(revision: str, as_json: bool) -> int:
    """Apply the catalogue's migrations (idempotent)."""
    from sqlalchemy.engine import Engine

    from falq.shared.catalogue.engine import current
    from falq.shared.catalogue.engine import upgrade as run_upgrade
    from falq.shared.errors import CatalogueUnavailable

    engine, where = _engine()
    assert isinstance(engine, Engine)
    try:
        before = current(engine)
        after = run_upgrade(engine, revision)
    except CatalogueUnavailable as exc:
        return fail(as_json, "catalogue_unavailable", str(exc), EXIT_UNAVAILABLE)
    if as_json:
        emit_json({"database": where, "from": before, "to": after})
    elif before == after:
        click.echo(f"{where}: already at {after}")
    else:
        click.echo(f"{where}: upgraded {before or 'empty'} -> {after}")
    return EXIT_OK


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def current(as_json: bool) -> int:
    """The revision the database is at, and the newest this falq ships (exit 1 if behind)."""
    from sqlalchemy.engine import Engine

    from falq.shared.catalogue.engine import current as current_rev
    from falq.shared.catalogue.engine import head
    from falq.shared.errors import CatalogueUnavailable

    engine, where = _engine()
    assert isinstance(engine, Engine)
    try:
        have = current_rev(engine)
    except CatalogueUnavailable as exc:
        return fail(as_json, "catalogue_unavailable", str(exc), EXIT_UNAVAILABLE)
    want = head()
    if as_json:
        emit_json({"database": where, "current": have, "head": want, "up_to_date": have == want})
    else:
        note = "up to date" if have == want else "behind: run `falq db upgrade`"
        click.echo(f"{where}: {have or 'empty'} (newest {want}; {note})")
    return EXIT_OK if have == want else 1
