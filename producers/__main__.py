"""``python -m producers`` runs the ``falq`` CLI (useful without the console script on PATH)."""

import sys

from producers.cli import main

sys.exit(main())
