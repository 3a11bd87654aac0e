"""falq's HTTP gateway: fal's queue protocol and falq's REST API over one falq deployment.

Any fal client, in any language, changes only where it points and gets falq's global
limits, retries, crash safety, S3 copies and monitoring. See :mod:`falq.gateway.app`.

Example::

    FALQ_API_KEYS=k1 falq api --port 8080
    # Python: fal_client with QUEUE_URL_FORMAT = "http://127.0.0.1:8080/", FAL_KEY=k1
"""

from falq.gateway.app import create_app
from falq.gateway.server import GatewayServer

__all__ = ["GatewayServer", "create_app"]
