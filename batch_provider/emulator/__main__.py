"""``python -m batch_provider.emulator [options]`` (same options as ``batch-provider emulator``)."""

import sys

from .server import main

sys.exit(main())
