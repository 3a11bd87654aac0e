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


@db.command()
@click.option("--reset", is_flag=True, help="Drop the claim: the next worker to start makes its catalogue the "
                                            "shared history (to move it to another database server).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def shared(reset: bool, as_json: bool) -> int:
    """The deployment's shared history (the catalogue archivers write) and which catalogue each
    registered worker and gateway uses (falq.shared.catalogue.registry)."""
    from falq.shared.catalogue.registry import CatalogueRegistry
    from falq.shared.redisconn import redis_client
    from falq.shared.settings import get_settings

    settings = get_settings()
    reg = CatalogueRegistry(redis_client(settings.redis_url, max_connections=2, settings=settings),
                            prefix=settings.key_prefix)
    was = reg.reset() if reset else reg.shared()
    hosts = reg.registrations()
    if as_json:
        emit_json({"shared": None if reset else was, "reset": was if reset else None,
                   "registrations": [{"role": g.role, "host": g.host, "catalogue": g.catalogue, "seen": g.seen,
                                      "stale": g.stale()} for g in hosts]})
        return EXIT_OK
    if reset:
        click.echo(f"shared history claim dropped (was {was or 'unset'}); the next worker to start claims it")
    else:
        click.echo(f"shared history: {was or 'unset (no archiver has started)'}")
    for g in hosts:
        mark = "" if was is None or reset or g.catalogue == was else "  <- outside the shared history"
        click.echo(f"  {g.role}@{g.host}: {g.catalogue}{' (stale)' if g.stale() else ''}{mark}")
    return EXIT_OK
