"""``python -m falq.emulator``: serve the fal emulator (see ``--help``; the same command as ``falq emulator``)."""

import sys

from falq.emulator.server import main

sys.exit(main())
