"""``python -m falq.workers`` (what ``falq worker`` runs): a Celery worker on the gevent pool.

gevent must patch the standard library before anything opens a socket, so this module
patches first and imports falq afterwards. The options are :data:`falq.workers.cli.command`'s
(``--help``).
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from falq.workers.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
