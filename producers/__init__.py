"""falq's producer side: the Python API, the ``falq`` CLI and bulk pipelines.

Example::

    from falq.producers import Falq
    job = Falq().generate("a red fox")
"""

from falq.producers.client import Falq, JobHandle, JobRequest, JobTimeout

__all__ = ["Falq", "JobHandle", "JobRequest", "JobTimeout"]
