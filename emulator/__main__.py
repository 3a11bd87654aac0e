"""``python -m falq.emulator``: serve the fal emulator (see ``--help``)."""

import sys

from falq.emulator.server import main

sys.exit(main())
