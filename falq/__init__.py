"""falq: a distributed, crash-safe job system for fal.ai Qwen-Image-2 generation.

One import root for every layer, each a folder at the repository's top:

* :mod:`falq.shared` -- settings, errors, schemas, the fal client, the job store, storage;
* :mod:`falq.workers` -- the Celery worker that runs each job through fal's queue API;
* :mod:`falq.emulator` -- fal's queue API offline, for tests and demos;
* :mod:`falq.producers` -- the Python API (:class:`Falq`) and the ``falq`` CLI;
* :mod:`falq.gateway` -- the HTTP gateway (``falq api``);
* :mod:`falq.ops` -- the demo, benchmarks, Flower, metrics.

Example::

    from falq import Falq
    job = Falq().generate("a red fox in the snow")
    rec = job.wait(120)

``Falq`` is imported on first use, so ``import falq`` (and ``falq --help``) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from falq.producers.client import Falq, JobHandle

__all__ = ["Falq", "JobHandle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from falq.producers import client

        return getattr(client, name)
    raise AttributeError(f"module 'falq' has no attribute {name!r}")
