"""falq's producer side: the Python API, the ``falq`` CLI and bulk pipelines.

Example::

    from falq.producers import Falq
    job = Falq().generate("a red fox")

:class:`Admin` (:mod:`falq.producers.admin`) is the administration service the CLI and
the gateway share: limits, budget, retry, cancel, dead letters, with one set of rules.
"""

from falq.producers.admin import Admin
from falq.producers.client import Falq, JobHandle, JobRequest, JobTimeout

__all__ = ["Admin", "Falq", "JobHandle", "JobRequest", "JobTimeout"]
