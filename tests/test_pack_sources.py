"""Every pack's patch against its real upstream base: from the release sdist where the pack pins one
(the configured package index), else from git (GitHub, or a mirror that git's url.insteadOf points
at). Skipped with the reason when neither can be reached; CI has the index but not GitHub."""

import py_compile

import pytest

from harness.core import manifest
from harness.core.layout import Layout
from harness.sources import patching
from harness.sources import upstream as sources

LAYOUT = Layout()
PACKS = [manifest.load_pack(f, LAYOUT) for f in manifest.discover(LAYOUT)]


def acquire(pack, cache):
    if pack.sdist:
        try:
            return sources.acquire_sdist(pack.repo, pack.base_ref, pack.sdist, pack.sdist_sha256, cache,
                                         lambda m: None)
        except sources.SourceError as exc:
            if "sha256" in str(exc):
                raise  # a reachable index serving other bytes than the pin is a failure, not a skip
            pytest.skip(f"the package index cannot be reached here: {exc}")
    try:
        return sources.acquire_git(pack.repo, pack.base_ref, pack.base_commit, "pinned", pack.source_paths, cache,
                                   lambda m: None)
    except sources.SourceError as exc:
        pytest.skip(f"git-only base and {pack.git_url} cannot be reached here (no mirror configured): {exc}")


@pytest.mark.network
@pytest.mark.parametrize("pack", [p for p in PACKS if p.has_patch], ids=lambda p: p.name)
def test_patch_applies_to_the_pinned_base(pack, tmp_path):
    src = acquire(pack, tmp_path / "cache")
    work = sources.work_copy(src, tmp_path / "work")
    result = patching.apply(work, pack.patch_path)
    assert result.status == "applied", result.failures
    assert sorted(result.files) == sorted(patching.patch_files(pack.patch_path))
    for path in result.files:
        if path.endswith(".py"):
            py_compile.compile(str(work / path), doraise=True)
    for rel in pack.import_paths:
        assert (work / rel).exists(), f"import path {rel} missing from the {src.kind} tree"


@pytest.mark.network
@pytest.mark.parametrize("pack", [p for p in PACKS if p.is_contract], ids=lambda p: p.name)
def test_contract_pack_sources_at_the_pinned_base(pack, tmp_path):
    src = acquire(pack, tmp_path / "cache")
    work = sources.work_copy(src, tmp_path / "work")
    for rel in pack.import_paths:
        assert (work / rel).exists(), f"import path {rel} missing from the {src.kind} tree"


@pytest.mark.network
@pytest.mark.parametrize("pack", [p for p in PACKS if p.is_contract and not p.gpu and not p.retired],
                         ids=lambda p: p.name)
def test_cpu_contract_pack_gives_its_expected_verdict(pack, tmp_path):
    """CPU-only contract packs run here for real (git, or the sdist when git cannot be reached); where the
    pack's requirements (torch, ...) are not installed, as in CI, the runner says SKIPPED and so does this."""
    from harness.run.pipeline import RunOptions, run_pack

    result = run_pack(pack, RunOptions(cache_dir=tmp_path / "cache", run_dir=tmp_path / "runs", layout=LAYOUT),
                      lambda m: None)
    if result.verdict == "SKIPPED":
        pytest.skip(result.reason)
    assert result.as_expected, f"{result.verdict}: {result.reason}"
