"""falq on one machine, for the demo, the benchmarks and the test suite: :mod:`falq.testing.stack`.

:class:`~falq.testing.stack.DevStack` starts a real deployment (a ``redis-server`` process,
S3 over HTTP, the fal emulator, ``falq worker`` processes) on free ports; ``make demo``
(:mod:`falq.ops.demo`), ``make bench`` and the integration and system tests all run it.
Importing this package needs only falq's own dependencies plus a ``redis-server`` on PATH
to start one; its S3 is moto's server, which comes with the ``testing`` extra
(``pip install 'falq[testing]'``) and is imported only when a stack starts S3.

Example::

    from falq import Falq
    from falq.testing import DevStack

    with DevStack() as stack:
        stack.start_worker(concurrency=20)
        Falq(stack.settings()).generate("a red fox").wait(60)
"""

from falq.testing.stack import TEST_FAL_KEY, DevStack, RedisServer, S3Server, free_port

__all__ = ["TEST_FAL_KEY", "DevStack", "RedisServer", "S3Server", "free_port"]
