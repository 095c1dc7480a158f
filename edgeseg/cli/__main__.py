"""``python -m edgeseg.cli``: what a Ray job's entrypoint runs."""

import sys

from edgeseg.cli.main import main

sys.exit(main())
