"""``make demo``: the whole pipeline on this machine, with nothing configured.

Starts a real ``redis-server``, an S3 endpoint (moto over HTTP), the fal emulator and two
``falq worker`` processes; enqueues text-to-image and edit jobs on all four endpoints
through the producer API (interactive and bulk lanes); waits for them; then downloads
the S3 copies into ``demo-output/`` for a person to open.

It never talks to the real fal: the emulator stands in for it (and says so below).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command
from falq.testing.stack import DevStack

PROMPTS: list[tuple[str, dict[str, Any]]] = [
    ("a lighthouse on a cliff at dusk, oil painting", {}),
    ("a red fox in fresh snow, golden hour", {"image_size": "landscape_16_9", "output_format": "jpeg"}),
    ("isometric city block made of paper, soft shadows", {"image_size": "portrait_4_3", "pro": True}),
]


@click.command(name="demo", help=__doc__, context_settings=HELP_OPTIONS)
@click.option("--out", default="demo-output", help="where to save the images (default demo-output/)")
@click.option("--bulk", type=int, default=6, help="how many bulk-lane jobs to add (default 6)")
@click.option("--keep", is_flag=True,
              help="keep everything running afterwards, with the web console and Flower, until Ctrl-C")
def command(out: str, bulk: int, keep: bool) -> int:
    return _demo(Path(out).resolve(), bulk, keep)


def main(argv: list[str] | None = None) -> int:
    """``make demo`` / ``python -m falq.ops.demo``: run :data:`command` on ``argv``; returns the exit code."""
    return run_command(command, argv, prog_name="make demo")


def _demo(out: Path, n_bulk: int, keep: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)

    from falq.producers import Falq
    from falq.producers.client import JobRequest
    from falq.shared.storage.images import to_data_uri
    from falq.shared.storage.s3 import Storage

    print("falq demo: starting Redis, S3 (moto), the fal emulator and 2 workers ...", flush=True)
    # Realistic limits for a small fal account: 4 slots at fal, a few more outstanding.
    # The catalogue of finished jobs: the embedded SQLite file, kept beside the images after the demo.
    catalogue = out / "catalogue.sqlite3"
    with DevStack(emulator={"latency": "uniform:1,3", "concurrency": 4},
                  env={"FALQ_MAX_OUTSTANDING": "6", "FALQ_RATE_PER_S": "10",
                       "FALQ_DATABASE_URL": f"sqlite:///{catalogue}"}) as stack:
        for _ in range(2):
            stack.start_worker(concurrency=50)
        settings = stack.settings()
        falq = Falq(settings)
        storage = Storage(settings)
        print(f"  redis     {stack.redis.url}")
        print(f"  s3        {stack.s3.url}  bucket {settings.s3_bucket}")
        print(f"  fal       {stack.emu.url}  (falq's fal emulator: no real fal call is made, nothing is billed)")
        print(f"  catalogue {catalogue}  (SQLite: every finished job; kept after the demo, e.g.\n"
              f"            FALQ_DATABASE_URL=sqlite:///{catalogue} falq report spend --by day,endpoint)")
        t0 = time.monotonic()

        jobs: list[Any] = []
        for prompt, preset in PROMPTS:
            opts = dict(preset)
            pro = bool(opts.pop("pro", False))
            jobs.append(falq.generate(prompt, pro=pro, seed=len(jobs) + 1, **opts))
        print(f"enqueued {len(jobs)} interactive text-to-image jobs; waiting ...", flush=True)
        first = jobs[0].wait(120)
        if first.state != "completed":
            print(f"job {first.id} ended {first.state}: {first.error}", file=sys.stderr)
            return 1
        # Edit the first result: its S3 copy goes back to fal as a data URI.
        source = to_data_uri(storage.get_bytes(first.outputs[0].key), first.outputs[0].content_type)
        jobs.append(falq.edit("make it a winter night with northern lights", [source], seed=7))
        jobs.append(falq.edit("turn it into a pencil sketch", [source], pro=True, seed=8))
        bulk = [
            JobRequest("fal-ai/qwen-image-2/text-to-image",
                       {"prompt": f"bulk item {i}: a ceramic bowl, studio photo", "seed": 100 + i,
                        "image_size": "square"}, lane="bulk")
            for i in range(n_bulk)
        ]
        bulk_ids = [job_id for job_id, _ in falq.submit_many(bulk)]
        print(f"enqueued 2 edit jobs and {len(bulk_ids)} bulk-lane jobs; waiting ...", flush=True)
        # A chain (falq.shared.batches.chains): an edit of a generate's output, both enqueued at once;
        # the edit waits, without a worker slot, until its parent's image is in S3.
        parent = falq.generate("a glass bottle on a wooden table, product photo", seed=21)
        child = falq.submit("fal-ai/qwen-image-2/edit", {"prompt": "the same bottle on a beach at sunset",
                                                         "image_urls": [f"falq:{parent.id}#0"]})
        print(f"enqueued a chain: generate {parent.id} -> edit {child.id} (falq:{parent.id}#0)", flush=True)
        handles = jobs + [falq.job(i) for i in bulk_ids] + [parent, child]
        records = [h.wait(300) for h in handles]
        pair = _side_by_side(records[-2], records[-1], storage, out / "chain_parent_child.png")
        if pair is not None:
            print(f"chain: parent and child side by side in {pair}")

        saved = 0
        print(f"\n{'job id':32}  {'endpoint':38} {'state':9} att  image")
        for rec in records:
            for img in rec.outputs:
                path = out / f"{rec.id}_{img.index}.{img.key.rsplit('.', 1)[-1]}"
                path.write_bytes(storage.get_bytes(img.key))
                saved += 1
                print(f"{rec.id:32}  {rec.endpoint:38} {rec.state:9} {rec.attempts:>3}  {path.name} "
                      f"({img.width}x{img.height}, s3://{img.bucket}/{img.key})")
            if not rec.outputs:
                print(f"{rec.id:32}  {rec.endpoint:38} {rec.state:9} {rec.attempts:>3}  -  {rec.error}")
        done = sum(1 for r in records if r.state == "completed")
        print(f"\n{done}/{len(records)} jobs completed in {time.monotonic() - t0:.1f}s; "
              f"{saved} images copied from S3 into {out}/")
        print("Open them with any image viewer; each one shows the prompt, endpoint and seed that made it.")
        print("\nWhat `falq top` shows for this run (jobs/min, states, latency percentiles, spend):")
        from falq.ops.top import run as top

        top(settings, once=True)
        print("\nWhat `falq doctor` says about this stack (run it on every host of a deployment):")
        from falq.ops.doctor import run_checks

        checks = run_checks(settings)
        for check in checks:
            print(check.line())
        if any(c.status == "fail" for c in checks):
            return 1
        if keep:
            _keep_running(stack)
        else:
            print("(run `make demo ARGS=--keep` to keep the stack up and look at it in the web console, Flower "
                  "and `falq top`)")
        return 0 if done == len(records) else 1


def _side_by_side(parent: Any, child: Any, storage: Any, path: Path) -> Path | None:
    """Save the parent's and the child's first images next to each other (None if either failed)."""
    import io

    from PIL import Image

    if parent.state != "completed" or child.state != "completed" or not parent.outputs or not child.outputs:
        return None
    left, right = (Image.open(io.BytesIO(storage.get_bytes(r.outputs[0].key))).convert("RGB") for r in (parent, child))
    canvas = Image.new("RGB", (left.width + right.width + 16, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 16, 0))
    canvas.save(path)
    return path


def _keep_running(stack: DevStack) -> None:
    """Leave the stack up with Flower in front of it until Ctrl-C, printing how to look at it."""
    import os
    import secrets
    import subprocess

    from falq.gateway.server import GatewayServer
    from falq.testing.stack import ROOT, free_port

    password = secrets.token_urlsafe(12)
    port = free_port()
    env = {**os.environ, **stack.env(), "FALQ_FLOWER_PASSWORD": password}
    flower = subprocess.Popen([sys.executable, "-m", "falq.cli", "flower", "--port", str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The gateway with its web console, on a fresh key printed once (a local demo's key).
    console_key = "falq-demo-" + secrets.token_urlsafe(16)
    gateway = GatewayServer(stack.settings(), api_keys=[console_key], port=free_port()).start()
    exports = " ".join(f"{k}={v}" for k, v in stack.env().items() if k.startswith(("FALQ_REDIS", "FALQ_KEY")))
    print(f"\nFlower:     http://127.0.0.1:{port}/tasks   (user falq, password {password})")
    print(f"Console:    {gateway.url}/ui/   (sign in with the API key {console_key})")
    print(f"Gateway:    {gateway.url}   (REST and fal's queue protocol: Authorization: Key {console_key})")
    print(f"falq top:   {exports} .venv/bin/falq top")
    print("Press Ctrl-C to stop everything.")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
        flower.terminate()
        flower.wait(10)


if __name__ == "__main__":
    sys.exit(main())
