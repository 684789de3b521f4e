"""``python -m lightning_prune.cli ARGS`` under the suite's ``--masking`` (``masking_mode.ENV``).

Usage: python tests/scripts/cli.py ARGS   (``masking_mode.cli_command()``; the tests launch it only when ENV is set).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
import masking_mode  # noqa: E402

masking_mode.apply_env()

from lightning_prune.cli import main  # noqa: E402

sys.exit(main())
