#!/usr/bin/env python3
"""Entry point: `python runner.py --pack 09`. Everything else lives in harness/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
