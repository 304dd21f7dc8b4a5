"""Pack 09's patch against the real liger-kernel 0.8.1 release sdist from the configured index."""

import py_compile

import pytest

from harness import manifest, patching, sources
from harness.layout import Layout


@pytest.mark.network
def test_pack09_patch_applies_to_the_release_sdist(tmp_path):
    layout = Layout()
    pack = manifest.load_pack(manifest.select(["09"], layout)[0], layout)
    try:
        src = sources.acquire_sdist(pack.repo, pack.base_ref, pack.sdist, pack.sdist_sha256, tmp_path / "cache",
                                    lambda m: None)
    except sources.SourceError as exc:
        if "sha256" in str(exc):
            raise  # a reachable index serving other bytes than the pin is a failure, not a skip
        pytest.skip(f"the package index cannot be reached here: {exc}")
    work = sources.work_copy(src, tmp_path / "work")
    result = patching.apply(work, pack.patch_path)
    assert result.status == "applied", result.failures
    assert result.files == ["src/liger_kernel/ops/fused_linear_cross_entropy.py"]
    py_compile.compile(str(work / result.files[0]), doraise=True)
