#!/usr/bin/env python3
"""Entry point: `python runner.py --pack 09`. Everything else lives in harness/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.offline.boot import boot  # noqa: E402  (stdlib only)

boot(sys.argv[1:])  # --offline DIR: the bundle's runner dependencies fill what this Python lacks

from harness.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
