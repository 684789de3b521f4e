"""``UnstructuredPruning(every_n_steps=2)`` under DDP with 2 CPU processes (unstructured_ddp.py's ``steps=True``).

Usage: python tests/scripts/unstructured_ddp_steps.py OUT_DIR   (run by tests/test_steps.py)
"""

import sys

from unstructured_ddp import main

if __name__ == "__main__":
    main(sys.argv[1], steps=True)
