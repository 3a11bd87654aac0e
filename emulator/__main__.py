"""``python -m emulator``: serve the fal emulator (see ``--help``)."""

import sys

from emulator.server import main

sys.exit(main())
