"""``python -m falq.cli`` runs the ``falq`` CLI (useful without the console script on PATH)."""

import sys

from falq.cli.main import main

sys.exit(main())
