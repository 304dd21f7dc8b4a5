"""Run upstream's own tests on a pack's *patched* tree (the regression guard named in pack READMEs).

    python tests/gpu/upstream_tests.py --pack 05 [--offline BUNDLE] [--pin-autotune] -- PYTEST ARGS

The tree is the pack's pinned base with its patch applied, imported without building (skip_init),
with an offline bundle's wheels on the path when one is given. --pin-autotune loads a plugin that
pins every Mamba-3 Triton autotuner to one config (the rule pack 04's reproducer uses), for a
machine with minutes, not hours, of GPU time; the tests' assertions are upstream's, unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness.offline.boot import boot  # noqa: E402  (stdlib only)

boot(sys.argv[1:])  # --offline: the bundle's runner dependencies fill what this Python lacks

from harness.core import manifest  # noqa: E402
from harness.core.layout import Layout, default_cache_dir  # noqa: E402
from harness.offline import bundle  # noqa: E402
from harness.sources import (
    importing,  # noqa: E402
    patching,  # noqa: E402
)
from harness.sources import upstream as sources  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", required=True)
    parser.add_argument("--offline", type=Path)
    parser.add_argument("--pin-autotune", action="store_true")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    layout = Layout()
    pack = manifest.load_pack(manifest.select([args.pack], layout)[0], layout)
    cache, extra = default_cache_dir(), []
    if args.offline:
        cache, extra, _ = bundle.open_bundle(args.offline.resolve(), print)
    src = sources.acquire_git(pack.repo, pack.base_ref, pack.base_commit, "pinned", pack.source_paths, cache, print)
    work = Path(tempfile.mkdtemp(prefix=f"upstream-tests-{pack.id}-"))
    tree = sources.work_copy(src, work / "patched")
    result = patching.apply(tree, pack.patch_path)
    if result.status != "applied":
        print(f"pack {pack.name}: patch {result.status}: {result.failures}", file=sys.stderr)
        return 2
    path = [str(p) for p in importing.path_entries(tree, pack.import_paths, pack.skip_init, work / "site") + extra]
    if args.pin_autotune:
        path.append(str(Path(__file__).parent))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *(["-p", "pin_autotune"] if args.pin_autotune
                                                                     else []), *args.pytest_args[1:]]
    print(f"patched tree: {tree} ({pack.repo}@{src.commit}); running: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=tree, env=env)


if __name__ == "__main__":
    sys.exit(main())
