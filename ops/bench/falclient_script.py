"""Reference 2, what a user writes without falq: fal's official ``fal-client``, one asyncio
process, an ``asyncio.Semaphore`` for concurrency; no durability, no S3 copy, no limits.

Run by the harness in its own process (so its CPU does not compete inside the harness)::

    python -m falq.ops.bench.falclient_script --url EMULATOR --n 500 --concurrency 200 --out r.json

``fal_client`` is pointed at the emulator through its module globals, as
``tests/system/test_emulator_with_official_fal_clients.py`` does, and otherwise runs unchanged (``subscribe``, which
polls the status every 0.1 s). ``--sequential`` runs one job at a time (latency). The JSON
written has the wall time, this process' CPU seconds, and per request its id and the
epoch time its result was in hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command

ENDPOINT = "fal-ai/qwen-image-2/text-to-image"


async def _run(n: int, concurrency: int, sequential: bool, payload: dict[str, Any]) -> list[dict[str, Any]]:
    import fal_client

    client = fal_client.AsyncClient(key=os.environ.get("FAL_KEY"))
    sem = asyncio.Semaphore(1 if sequential else concurrency)
    out: list[dict[str, Any]] = []

    async def one(i: int) -> None:
        async with sem:
            t0 = time.time()
            handle = await client.submit(ENDPOINT, {**payload, "prompt": f"fal-client {i}", "seed": i})
            await handle.get()
            out.append({"request_id": handle.request_id, "started": t0, "done_at": time.time()})

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


@click.command(name="falclient_script", help=__doc__, context_settings=HELP_OPTIONS)
@click.option("--url", required=True, help="the emulator's base URL")
@click.option("--n", type=int, required=True, help="jobs to run")
@click.option("--concurrency", type=int, default=100, show_default=True, help="jobs in flight (the semaphore)")
@click.option("--sequential", is_flag=True, help="one job at a time (latency)")
@click.option("--payload", default="{}", help="extra input fields (JSON)")
@click.option("--out", required=True, help="where to write the JSON")
def command(url: str, n: int, concurrency: int, sequential: bool, payload: str, out: str) -> int:
    import fal_client.client as fal_client_module

    fal_client_module.QUEUE_URL_FORMAT = f"{url}/"  # type: ignore[attr-defined]
    fal_client_module.REST_URL = url  # type: ignore[attr-defined]
    fal_client_module.CDN_URL = url  # type: ignore[attr-defined]
    t0, c0 = time.monotonic(), time.process_time()
    results = asyncio.run(_run(n, concurrency, sequential, json.loads(payload)))
    doc = {"elapsed_s": time.monotonic() - t0, "cpu_s": time.process_time() - c0, "results": results}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` on ``argv``; returns the exit code."""
    return run_command(command, argv, prog_name="python -m falq.ops.bench.falclient_script")


if __name__ == "__main__":
    raise SystemExit(main())
