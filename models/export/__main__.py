"""python -m models.export CHECKPOINT OUT [--format ...]: export a checkpoint for serving (models.export.command)."""
import sys

from models.export.command import main

if __name__ == "__main__":
    main()
    sys.exit(0)
