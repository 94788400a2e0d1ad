"""``python -m app`` is the ``grid`` command (for when the scripts directory is not on PATH)."""
import sys

from app.cli import main

sys.exit(main())
