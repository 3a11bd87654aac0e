"""The chain reference: what a user writes without falq to generate, then edit what was
generated -- fal's official ``fal-client`` in one asyncio process; for each generate it
waits for the result, then submits its edits with the generated image's URL, and waits
for those. No durability: a crash in between loses track of what was done.

Run by the ``chain`` scenario in its own process::

    python -m falq.ops.bench.falclient_chain --url EMULATOR --n 100 --edits 4 --out r.json

The JSON written has the wall time and per request the epoch time its result was in hand.
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

T2I = "fal-ai/qwen-image-2/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"


async def _run(n: int, edits: int, concurrency: int) -> list[dict[str, Any]]:
    import fal_client

    client = fal_client.AsyncClient(key=os.environ.get("FAL_KEY"))
    sem = asyncio.Semaphore(concurrency)
    out: list[dict[str, Any]] = []

    async def call(endpoint: str, data: dict[str, Any]) -> dict[str, Any]:
        async with sem:
            handle = await client.submit(endpoint, data)
            result: dict[str, Any] = await handle.get()
            out.append({"request_id": handle.request_id, "endpoint": endpoint, "done_at": time.time()})
            return result

    async def chain(i: int) -> None:
        first = await call(T2I, {"prompt": f"chain root {i}", "seed": i})
        url = first["images"][0]["url"]
        await asyncio.gather(*(call(EDIT, {"prompt": f"edit {i}.{k}", "image_urls": [url]}) for k in range(edits)))

    await asyncio.gather(*(chain(i) for i in range(n)))
    return out


@click.command(name="falclient_chain", help=__doc__, context_settings=HELP_OPTIONS)
@click.option("--url", required=True, help="the emulator's base URL")
@click.option("--n", type=int, required=True, help="generates (each with --edits edits)")
@click.option("--edits", type=int, default=4, show_default=True, help="edits per generate")
@click.option("--concurrency", type=int, default=1000, show_default=True, help="requests in flight (the semaphore)")
@click.option("--out", required=True, help="where to write the JSON")
def command(url: str, n: int, edits: int, concurrency: int, out: str) -> int:
    import fal_client.client as fal_client_module

    fal_client_module.QUEUE_URL_FORMAT = f"{url}/"  # type: ignore[attr-defined]
    fal_client_module.REST_URL = url  # type: ignore[attr-defined]
    fal_client_module.CDN_URL = url  # type: ignore[attr-defined]
    t0 = time.monotonic()
    started = time.time()
    results = asyncio.run(_run(n, edits, concurrency))
    doc = {"elapsed_s": time.monotonic() - t0, "started": started, "results": results}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` on ``argv``; returns the exit code."""
    return run_command(command, argv, prog_name="python -m falq.ops.bench.falclient_chain")


if __name__ == "__main__":
    raise SystemExit(main())
