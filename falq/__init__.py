"""falq: a distributed, crash-safe job system for fal.ai Qwen-Image-2 generation.

The public API is what this module exports (``__all__``): the client, the handle of a job,
its record, and the errors a user catches. Everything else is implementation, reached
through the layer folders below, and may change between versions.

* :mod:`falq.shared` -- settings, errors, schemas, the fal client, the job store, storage;
* :mod:`falq.workers` -- the Celery worker that runs each job through fal's queue API;
* :mod:`falq.emulator` -- fal's queue API offline, for tests and demos;
* :mod:`falq.producers` -- the Python API (:class:`Falq`) and the ``falq`` CLI;
* :mod:`falq.gateway` -- the HTTP gateway (``falq api``);
* :mod:`falq.ops` -- the demo, benchmarks, Flower, metrics;
* :mod:`falq.testing` -- falq on one machine (Redis, S3, the emulator, workers) for the demo,
  the benchmarks and the tests.

Example::

    from falq import Falq, InvalidInput, JobTimeout

    try:
        job = Falq().generate("a red fox in the snow")
        rec = job.wait(120)
    except InvalidInput as exc:       # nothing was enqueued; exc.errors names each field
        ...
    except JobTimeout:                # the job goes on; wait again or look it up later
        ...

``Falq`` and the types around it are imported on first use, so ``import falq`` (and
``falq --help``) stays light; the errors are plain classes with no heavy imports.
"""

import typing as _typing

from falq.shared.errors import (
    CatalogueUnavailable,
    FalqError,
    FieldError,
    InvalidInput,
    JobNotFound,
    JobTimeout,
    PermanentError,
    RedisMemoryFull,
    RetryableError,
)

if _typing.TYPE_CHECKING:
    from falq.producers.client import Falq, JobHandle, JobRequest
    from falq.shared.jobs.records import JobRecord

#: Names imported on first use: name -> the module that defines it.
_LAZY = {
    "Falq": "falq.producers.client",
    "JobHandle": "falq.producers.client",
    "JobRequest": "falq.producers.client",
    "JobRecord": "falq.shared.jobs.records",
}

__all__ = [
    "CatalogueUnavailable",
    "Falq",
    "FalqError",
    "FieldError",
    "InvalidInput",
    "JobHandle",
    "JobNotFound",
    "JobRecord",
    "JobRequest",
    "JobTimeout",
    "PermanentError",
    "RedisMemoryFull",
    "RetryableError",
]


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    raise AttributeError(f"module 'falq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
