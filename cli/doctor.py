"""``falq doctor``: check that this host's configuration works, each check with its fix.

The checks live in :mod:`falq.ops.doctor`; this module prints them. Exit status 1 when any
check fails (warnings do not), 0 otherwise.
"""

from __future__ import annotations

import click

from falq.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_OK, emit_json, fail


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (name, status, detail, fix).")
def doctor(as_json: bool) -> int:
    """Check Redis, the broker, Sentinel, the S3 bucket, the catalogue and its shared history, the fal
    key, the clock, webhook/callback settings and the gateway's keys. Each line: PASS, WARN, FAIL or SKIP,
    with the fix. Starts no generation; the probes (a Redis key, an S3 object) are deleted at once."""
    from falq.ops.doctor import run_checks
    from falq.shared.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:  # pydantic.ValidationError: name the setting, never its value
        first = str(exc).splitlines()
        return fail(as_json, "invalid_settings", f"invalid settings: {' '.join(first[:2])}", EXIT_INVALID)
    results = run_checks(settings)
    failed = sum(c.status == "fail" for c in results)
    if as_json:
        emit_json({"ok": not failed, "checks": [c.as_json() for c in results]})
    else:
        for c in results:
            click.echo(c.line())
        warned = sum(c.status == "warn" for c in results)
        click.echo(f"\n{len(results)} checks: {failed} failed, {warned} warnings" if failed or warned
                   else f"\n{len(results)} checks: all good")
    return EXIT_FAILED if failed else EXIT_OK
