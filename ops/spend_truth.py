"""``python -m falq.ops.spend_truth``: does falq's spend equal what fal billed, to the cent?

Starts a DevStack (Redis, moto S3, the fal emulator, whose platform API answers an account price
unlike the list price: 0.03 vs 0.035 per standard image) and ``--workers`` ``falq worker``
processes with falq's default settings, enqueues one batch of ``--jobs`` jobs (``num_images`` 1-3,
every third job a pro one, every fifth line an edit of an earlier line's output), cancels
``--cancel`` of them while they run, waits until every job ended, and prints falq's total spend
(the sum of every record's ``cost_billed``: fal's ``x-fal-billable-units`` x the account's price)
beside the emulator's billed total (``GET /_emulator/billing``). Exit status 1 if they differ by
a micro-dollar or more.

``--emulator JSON`` sets emulator options for the run (its fault options: e.g. a share of results
answering 5xx with a request id, running requests that ignore cancels), so the same comparison runs
under the faults the live service shows now and then.

Example::

    python -m falq.ops.spend_truth --jobs 200 --cancel 10
    python -m falq.ops.spend_truth --jobs 200 --emulator '{"fail_5xx": 0.02}'
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import httpx

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command
from falq.testing.stack import DevStack

T2I, PRO, EDIT = ("fal-ai/qwen-image-2/text-to-image", "fal-ai/qwen-image-2/pro/text-to-image",
                  "fal-ai/qwen-image-2/edit")
EMULATOR = {"tiny_images": True, "latency": "uniform:0.3,1.2", "log_steps": 2}


def _lines(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 5 == 4:
            out.append({"id": f"l{i}", "endpoint": EDIT, "input": {"prompt": f"edit {i}", "num_images": 1,
                                                                     "image_urls": [f"falq:l{i - 1}#0"]}})
        else:
            out.append({"id": f"l{i}", "endpoint": PRO if i % 3 == 0 else T2I,
                        "input": {"prompt": f"spend truth {i}", "seed": i, "num_images": 1 + i % 3}})
    return out


def spend_truth(jobs: int, workers: int, cancel: int, emulator: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run the scenario; returns the figures (``equal`` says whether the totals match)."""
    from falq.producers import Falq
    from falq.producers.admin import Admin
    from falq.producers.bulk.batches import enqueue_batch, open_batch
    from falq.producers.bulk.enqueue import upload_lines

    with DevStack() as stack:
        stack.emu.configure(**{**EMULATOR, **emulator})
        for _ in range(workers):
            stack.start_worker(concurrency=100)
        falq = Falq(stack.settings())
        data = "".join(json.dumps(x) + "\n" for x in _lines(jobs)).encode()
        lines, rejects, run_key = upload_lines(falq, data, name="spend-truth")
        assert not rejects, rejects
        batch, _ = open_batch(falq, name="spend-truth", source_name="spend-truth", source_sha256="-",
                              run_key=run_key)
        t0 = time.monotonic()
        ids = enqueue_batch(falq, lines, batch)
        time.sleep(1.0)
        admin = Admin(falq)
        for job_id in ids[1:: max(1, jobs // max(1, cancel))][:cancel]:
            admin.cancel(job_id)
        while True:
            live = falq.store.get_many(ids)
            if all(r is not None and r.terminal for r in live):
                break
            if time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"timed out after {timeout_s:.0f}s")
            time.sleep(1.0)
        # A cancelled request fal finished anyway may still be followed to its end: let it settle.
        time.sleep(3.0)
        recs = [r for r in falq.store.get_many(ids) if r is not None]
        fal = httpx.get(f"{stack.emu.url}/_emulator/billing", timeout=30).json()
    falq_micro = sum(round((r.cost_billed or 0.0) * 1_000_000) for r in recs)
    states: dict[str, int] = {}
    for r in recs:
        states[r.state] = states.get(r.state, 0) + 1
    return {"jobs": jobs, "states": states, "falq_spend_usd": falq_micro / 1e6,
            "fal_billed_usd": fal["billed_total_micro"] / 1e6, "fal_requests_billed": fal["requests_billed"],
            "price_sources": sorted({str(r.price_source) for r in recs if r.cost_billed is not None}),
            "equal": falq_micro == fal["billed_total_micro"], "elapsed_s": round(time.monotonic() - t0, 1)}


@click.command(name="spend_truth", help=(__doc__ or "").split("\n\n")[0], context_settings=HELP_OPTIONS)
@click.option("--jobs", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--cancel", type=click.IntRange(0, 100_000), default=10, show_default=True,
              help="jobs cancelled while they run")
@click.option("--emulator", "emulator_json", default="{}", help="emulator options for the run (JSON object)")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def command(jobs: int, workers: int, cancel: int, emulator_json: str, timeout_s: float, as_json: bool) -> int:
    try:
        emulator = json.loads(emulator_json)
    except ValueError:
        raise click.BadParameter("must be a JSON object", param_hint="--emulator") from None
    if not isinstance(emulator, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--emulator")
    out = spend_truth(jobs, workers, cancel, emulator, timeout_s)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"{out['jobs']} jobs in {out['elapsed_s']}s: " + ", ".join(f"{k} {v}" for k, v in
                                                                          sorted(out["states"].items())))
        click.echo(f"falq's spend:          ${out['falq_spend_usd']:,.6f}  (prices: {', '.join(out['price_sources'])})")
        click.echo(f"emulator billed total: ${out['fal_billed_usd']:,.6f}  ({out['fal_requests_billed']} requests)")
        click.echo("EQUAL to the micro-dollar" if out["equal"] else "DIFFERENT")
    return 0 if out["equal"] else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(command, argv, prog_name="python -m falq.ops.spend_truth")


if __name__ == "__main__":
    sys.exit(main())
