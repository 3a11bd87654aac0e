"""``python -m falq.producers`` runs the ``falq`` CLI (useful without the console script on PATH)."""

import sys

from falq.producers.cli import main

sys.exit(main())
