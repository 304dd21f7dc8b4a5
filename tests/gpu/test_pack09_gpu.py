"""Pack 09 end to end through the pipeline on a real GPU; skipped cleanly without one."""

import pytest

from harness.core import manifest
from harness.core.layout import Layout, default_cache_dir
from harness.run.pipeline import RunOptions, run_pack

torch = pytest.importorskip("torch", reason="torch is not installed")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_pack09_confirmed_at_the_pinned_base(tmp_path):
    layout = Layout()
    pack = manifest.load_pack(manifest.select(["09"], layout)[0], layout)
    opts = RunOptions(cache_dir=default_cache_dir(), run_dir=tmp_path / "runs", layout=layout)
    result = run_pack(pack, opts, print)
    assert result.verdict == "CONFIRMED", result.reason
    clean, patched = result.stages
    assert clean.evidence["worst_ratio"] > clean.evidence["thresholds"]["bug_factor"]
    assert patched.evidence["worst_ratio"] <= patched.evidence["thresholds"]["fix_factor"]
    assert clean.evidence["uniform_case_passes"], "loss.sum() must pass on the buggy code too"
