"""``falq tenants``: the services sharing one fal account, and their gateway API keys.

Examples::

    falq tenants list                                    # name, weight, caps, endpoints, S3 prefix
    falq tenants add shop --weight 2 --max-outstanding 8 --budget 40 --endpoint fal-ai/qwen-image-2/edit
    falq tenants set shop --rate 5 --budget none         # 'none' clears a cap of its own
    falq tenants set shop --all-endpoints                # every endpoint again
    falq tenants show shop
    falq tenants remove shop                             # refused while shop has unfinished jobs
    falq tenants key create shop --scope submit --scope read --label checkout   # prints the key ONCE
    falq tenants key list shop                           # id, label, scopes, created, last 4 characters
    falq tenants key revoke shop 3f9c0a1b2d4e            # the next request with it gets 401

A thin layer over :class:`falq.producers.admin.Admin` (the gateway's ``/v1/tenants`` routes use
it too): values are passed as typed, the service checks them and a bad one is
``error: field: rule`` with exit code 2. Changes are written to Redis and apply at once on
every worker and gateway (no restart).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from falq.cli.output import EXIT_OK, emit_json, handle_errors, make_client, stdout

if TYPE_CHECKING:
    from falq.producers.admin import Admin
    from falq.shared.tenants.store import Tenant


def _admin() -> Admin:
    from falq.producers.admin import Admin

    return Admin(make_client())


def _options(fn: Callable[..., int]) -> Callable[..., int]:
    opts = [
        click.option("--weight", metavar="W", help="Share of fal's capacity while tenants wait (0 < W <= 1000)."),
        click.option("--max-outstanding", metavar="N|none", help="Its own cap of requests outstanding at fal."),
        click.option("--rate", metavar="R|none", help="Its own cap of submissions per second."),
        click.option("--budget", "budget_usd", metavar="USD|none", help="Its own daily budget (UTC day)."),
        click.option("--endpoint", "endpoints", multiple=True, metavar="ENDPOINT",
                     help="An endpoint it may use (repeatable; none given: all)."),
        click.option("--s3-prefix", metavar="PREFIX", help="Folder of its images under FALQ_S3_PREFIX "
                                                           "(default: its name; default keeps the old layout)."),
        click.option("--priority", metavar="normal|low|none",
                     help="X-Fal-Queue-Priority of its jobs (none: the lane's setting). low waits behind every "
                          "customer's normal requests on fal's shared per-endpoint queue; no discount is documented."),
        click.option("--json", "as_json", is_flag=True, help="Print the tenant as JSON."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _fields(opts: dict[str, Any], *, all_endpoints: bool = False) -> dict[str, Any]:
    """The options the user gave, as the service's fields (unset ones left out)."""
    fields = {k: opts[k] for k in ("weight", "max_outstanding", "rate", "budget_usd", "s3_prefix", "priority")
              if opts.get(k) is not None}
    if opts.get("endpoints"):
        fields["endpoints"] = list(opts["endpoints"])
    if all_endpoints:
        fields["endpoints"] = []
    return fields


def _cap(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def _table(tenants: list[Tenant]) -> Table:
    table = Table(show_edge=False)
    for col in ("tenant", "weight", "max outstanding", "rate", "budget/day", "endpoints", "s3 prefix"):
        table.add_column(col)
    for t in tenants:
        table.add_row(t.name, f"{t.weight:g}", _cap(t.max_outstanding), _cap(t.rate, "/s"),
                      "-" if t.budget_usd is None else f"${t.budget_usd:,.2f}", ", ".join(t.endpoints) or "all",
                      t.s3_prefix or ("(none: old layout)" if t.name == "default" and not t.s3_prefix else t.name))
    return table


def _show(tenant: Tenant, as_json: bool) -> int:
    if as_json:
        emit_json(tenant.model_dump(mode="json"))
    else:
        stdout().print(_table([tenant]))
    return EXIT_OK


@click.group()
def tenants() -> None:
    """The tenants sharing the fal account (weights, own caps, endpoints) and their API keys."""


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def list_(as_json: bool) -> int:
    """Every tenant, default included."""
    found = _admin().tenants_list()
    if as_json:
        emit_json([t.model_dump(mode="json") for t in found])
    else:
        stdout().print(_table(found))
    return EXIT_OK


@tenants.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def show(name: str, as_json: bool) -> int:
    """One tenant's settings."""
    return _show(_admin().tenant_get(name), as_json)


@tenants.command()
@click.argument("name")
@_options
@handle_errors
def add(name: str, as_json: bool, **opts: Any) -> int:
    """Create tenant NAME (weight 1, no caps of its own, every endpoint, unless given)."""
    tenant = _admin().tenant_add(name, **_fields(opts))
    if not as_json:
        click.echo(f"tenant {tenant.name} added", err=True)
    return _show(tenant, as_json)


@tenants.command("set")
@click.argument("name")
@_options
@click.option("--all-endpoints", is_flag=True, help="Allow every endpoint again.")
@handle_errors
def set_(name: str, as_json: bool, all_endpoints: bool, **opts: Any) -> int:
    """Change some settings of tenant NAME (the others stay); applies at once everywhere."""
    return _show(_admin().tenant_set(name, **_fields(opts, all_endpoints=all_endpoints)), as_json)


@tenants.command()
@click.argument("name")
@handle_errors
def remove(name: str) -> int:
    """Remove tenant NAME and its API keys (refused for default and while it has unfinished jobs)."""
    tenant = _admin().tenant_remove(name)
    click.echo(f"tenant {tenant.name} removed (its API keys are revoked)")
    return EXIT_OK


@tenants.group()
def key() -> None:
    """Gateway API keys of a tenant: create (shown once), list, revoke."""


@key.command()
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["submit", "read", "admin"]), required=True,
              help="What the key may do (repeatable): submit, read, admin (admin includes both others).")
@click.option("--label", default="", help="What the key is for (shown in listings).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (the key included, once).")
@handle_errors
def create(name: str, scopes: tuple[str, ...], label: str, as_json: bool) -> int:
    """Create an API key for tenant NAME and print it (the only time it is shown)."""
    token, made = _admin().key_create(name, scopes, label)
    if as_json:
        emit_json({**made.as_json(), "key": token})
        return EXIT_OK
    click.echo(token)
    click.echo(f"key {made.id} of tenant {name} ({', '.join(made.scopes)}); it is not shown again: store it now",
               err=True)
    return EXIT_OK


@key.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def key_list(name: str, as_json: bool) -> int:
    """Tenant NAME's keys: id, label, scopes, created, last 4 characters (never the key)."""
    found = _admin().key_list(name)
    if as_json:
        emit_json([k.as_json() for k in found])
        return EXIT_OK
    if not found:
        click.echo(f"tenant {name} has no API keys", err=True)
        return EXIT_OK
    table = Table(show_edge=False)
    for col in ("id", "label", "scopes", "created", "ends in"):
        table.add_column(col)
    for k in found:
        when = datetime.fromtimestamp(k.created, UTC).strftime("%Y-%m-%d %H:%M UTC")
        table.add_row(k.id, k.label or "-", ",".join(k.scopes), when, f"...{k.last4}")
    stdout().print(table)
    return EXIT_OK


@key.command()
@click.argument("name")
@click.argument("key_id")
@handle_errors
def revoke(name: str, key_id: str) -> int:
    """Revoke tenant NAME's key KEY_ID (from `falq tenants key list`); effective at once."""
    _admin().key_revoke(name, key_id)
    click.echo(f"key {key_id} of tenant {name} revoked")
    return EXIT_OK
