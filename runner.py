#!/usr/bin/env python3
"""Entry point: `python runner.py --pack 09`. Everything else lives in harness/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.envs.runner_site import RunnerSiteError, fill_gaps  # noqa: E402  (stdlib only)
from harness.offline.boot import boot  # noqa: E402  (stdlib only)

boot(sys.argv[1:])  # --offline DIR: the bundle's runner dependencies fill what this Python lacks
why = ""
try:
    if "--offline" not in sys.argv[1:]:  # a node without network: the bundle is the only source
        fill_gaps(Path(__file__).resolve().parent)  # the runner's lock, installed once into the cache
except RunnerSiteError as exc:
    why = f" ({exc})"

try:
    from harness.cli.main import main  # noqa: E402
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] == "harness":
        raise  # the collection itself is incomplete: a bug, shown as one
    sys.exit(f"runner.py: the Python package '{exc.name}' is missing for {sys.executable}{why}; install the "
             "runner's dependencies first (pip install -e . in this folder, in a virtual environment where the "
             "system Python refuses it), or run from an offline bundle (--offline DIR)")

if __name__ == "__main__":
    sys.exit(main())
