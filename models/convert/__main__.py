"""python -m models.convert SOURCE IN.pth OUT.keras: convert a published checkpoint (models.convert.command)."""
import sys

from models.convert.command import main

if __name__ == "__main__":
    main()
    sys.exit(0)
