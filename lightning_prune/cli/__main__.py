"""``python -m lightning_prune.cli``: the same as the ``lightning-prune`` console command."""

import sys

from lightning_prune.cli import main

sys.exit(main())
