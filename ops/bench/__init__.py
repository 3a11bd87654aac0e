"""``falq bench``: falq measured beside what a user would otherwise pick, in one run.

The harness starts everything it needs on this machine (Redis, an S3 endpoint, the fal
emulator, worker processes), runs each scenario (:mod:`falq.ops.bench.scenarios`), and puts
every falq figure beside the same figure of a reference measured in the same run
(:mod:`falq.ops.bench.references`). The machine is shared and noisy, so the ratio is the
figure to read; absolute times alone mean little.

    python -m falq.ops.bench --quick            # about eight minutes on 2 cores, scaled down (says so)
    python -m falq.ops.bench                    # the full run docs/benchmarks.md reports
    python -m falq.ops.bench --only saturation --json /tmp/bench.json
"""
