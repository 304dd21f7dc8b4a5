"""What maintainers receive: issue bodies in each upstream's own template, and exports whose README works
when followed literally (a toy pack end to end; the real packs' git and import steps where a mirror of
their upstream is configured)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.core import manifest
from harness.core.layout import Layout
from harness.report import export, issue, receipts
from harness.sources import importing

REAL = Layout()


def real_packs():
    return [manifest.load_pack(folder, REAL) for folder in manifest.discover(REAL)]


def bash_block(readme: str) -> str:
    return re.search(r"```bash\n(.*?)\n```", readme, re.DOTALL).group(1)


@pytest.mark.parametrize("pack", real_packs(), ids=lambda p: p.id)
def test_every_issue_body_follows_its_repositorys_template(pack):
    body = issue.body(pack, receipts.latest_for(pack, REAL), REAL)
    _, headings = issue.template_of(pack)
    at = [body.find(h) for h in headings]
    assert all(i >= 0 for i in at), f"missing: {[h for h, i in zip(headings, at, strict=True) if i < 0]}"
    assert at == sorted(at), "the template's sections are out of order"
    for heading, start, end in zip(headings, at, [*at[1:], len(body)], strict=True):
        assert body[start + len(heading):end].strip(), f"section {heading!r} is empty"
    assert "```python" in body and "```bash" in body, "inline code and the steps"
    assert not re.search(r"\b(version|tilelang|triton|torch|CUDA|driver|Python)[: ]+None\b", body), "unprobed value"
    receipt = receipts.latest_for(pack, REAL)
    if receipt is not None:
        assert receipt["verdict"] in body and receipt["date"][:10] in body


def test_a_fixed_upstream_bug_says_so_first():
    pack = manifest.load_pack(manifest.select(["09"], REAL)[0], REAL)
    body = issue.body(pack, receipts.latest_for(pack, REAL), REAL)
    assert body.split("\n", 3)[2].startswith("> **Already fixed upstream**")


def test_tilelang_gets_a_regression_test_in_its_layout():
    pack = manifest.load_pack(manifest.select(["13"], REAL)[0], REAL)
    test = issue.regression_test(pack)
    compile(test, "test_tilelang_issue.py", "exec")
    assert re.search(r"^def test_tilelang_\w+\(\):", test, re.MULTILINE) and "tilelang.testing.main()" in test


def test_a_toy_export_works_when_followed_literally(collection, upstream, tmp_path):
    collection.add_pack("01", "toy", upstream.base)
    out = tmp_path / "export"
    assert cli.main(["--export", "01", str(out)], layout=collection.layout) == cli.EXIT_OK
    script = bash_block((out / "README.md").read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=out, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sentinels = [ln for ln in done.stdout.splitlines() if ln in ("BUG_REPRODUCED", "FIX_VALIDATED")]
    assert sentinels == ["BUG_REPRODUCED", "FIX_VALIDATED"], done.stdout[-2000:]


def test_the_exported_skip_init_registers_the_package_without_its_init(tmp_path):
    pkg = tmp_path / "checkout" / "heavy"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs a compiled extension')\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "kernel.py").write_text("VALUE = 3\n")
    site = tmp_path / "skip-init"
    site.mkdir()
    (site / "sitecustomize.py").write_text(importing.portable_sitecustomize(("heavy",)))
    env = {**os.environ, "PYTHONPATH": f"{site}:{tmp_path / 'checkout'}"}
    done = subprocess.run([sys.executable, "-c", "import heavy.ops.kernel as k; print(k.VALUE)"], env=env,
                          capture_output=True, text=True)
    assert done.stdout.strip() == "3", done.stderr


def _mirrored(repo: str) -> bool:
    out = subprocess.run(["git", "config", "--get-regexp", r"^url\..*\.insteadof$"], capture_output=True, text=True)
    return f"https://github.com/{repo}" in out.stdout


@pytest.mark.parametrize("pack_id", ["05", "16", "26"])
def test_a_real_export_checks_out_patches_and_imports_as_written(pack_id, tmp_path):
    """The README's git lines (checkouts and the patch) run as written; the install and GPU lines are left out
    (a CPU machine without the stack), and the import path is checked with the package's top level."""
    pack = manifest.load_pack(manifest.select([pack_id], REAL)[0], REAL)
    if not _mirrored(pack.repo) or any(not _mirrored(c.repo) for c in pack.companions):
        pytest.skip(f"needs git to reach {pack.repo} (a local mirror through url.<mirror>.insteadOf)")
    written = export.export(pack, tmp_path / "x", REAL)
    assert {p.name for p in written} >= {"repro.py", "README.md", f"requirements-{pack.stack}-py3.12.txt"}
    lines = bash_block((tmp_path / "x" / "README.md").read_text()).splitlines()
    kept = [ln for ln in lines if ln.startswith("git ")]
    assert [ln for ln in lines if ln.startswith("git -C upstream apply")], "the patch step"
    for line in kept:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path / "x", capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{line}: {done.stderr[-1500:]}"
    path = next(ln for ln in lines if ln.startswith("PYTHONPATH=")).split()[0].removeprefix("PYTHONPATH=")
    env = {**os.environ, "PYTHONPATH": ":".join(str(tmp_path / "x" / p) for p in path.split(":"))}
    probe = f"import {pack.package}; print({pack.package}.__path__[0])"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and str(tmp_path / "x") in done.stdout, done.stderr[-1500:]


def test_figures_are_drawn_from_the_evidence_as_printed(tmp_path):
    pytest.importorskip("matplotlib")
    from harness.report import plots

    sweep = {"sweep": [{"length": n, "dkv": 2e-3, "dkv_floor": 1.5e-3, "dq": 1e-3, "dq_floor": 1e-3}
                       for n in (1024, 2048)], "long_over_floor": 1.33}
    assert plots.error_over_floor(sweep, tmp_path / "a.png", "t") == tmp_path / "a.png"
    assert plots.error_over_floor({"sweep": [{"length": 1}]}, tmp_path / "b.png", "t") is None
    shapes = {"forward": [{"N": 16, "P": 64, "R": 4, "chunk": 8, "max_rel_err": 0.02, "forward_ms": 3.0}],
              "thresholds": {"rel_tol": 0.1}, "timing": "CUDA events"}
    assert plots.shape_sweep(shapes, tmp_path / "c.png", "t") is not None
    kernel = {"forward": [{**shapes["forward"][0], "forward_kernel_ms": None}], "timing": {"method": "CUPTI"}}
    assert plots.shape_sweep(kernel, tmp_path / "d.png", "t") is not None  # no kernels profiled: a zero bar
    report = tmp_path / "n1.json"
    report.write_text('{"packs": [{"pack": "01-x", "verdict": "CONFIRMED"}, {"pack": "02-y", "verdict": "HELD"}]}')
    assert plots.history([report, report], tmp_path / "h.png") is not None
    for name in ("a.png", "c.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_go_into_the_markdown_report(collection, upstream, tmp_path):
    pytest.importorskip("matplotlib")
    repro = REPRO_SWEEP
    collection.add_pack("01", "toy", upstream.base, repro=repro)
    md = tmp_path / "r" / "n.md"
    cli.main(["--pack", "01", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "runs"),
              "--markdown", str(md), "--plots", str(tmp_path / "r" / "fig")], layout=collection.layout)
    text = md.read_text()
    assert "![01-toy](fig/01-toy-clean-error_over_floor.png)" in text and (tmp_path / "r" / "fig").is_dir()


def test_a_nightly_report_draws_the_verdicts_per_night(collection, upstream, tmp_path):
    pytest.importorskip("matplotlib")
    collection.add_pack("01", "toy", upstream.base)
    earlier = tmp_path / "night-1.json"
    earlier.write_text('{"packs": [{"pack": "01-toy", "verdict": "INCONCLUSIVE"}]}')
    md = tmp_path / "r" / "n.md"
    common = ["--pack", "01", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "runs")]
    cli.main([*common, "--markdown", str(md), "--plots", str(tmp_path / "r" / "fig"), "--history", str(earlier)],
             layout=collection.layout)
    assert "![verdicts per night](fig/verdicts-per-night.png)" in md.read_text()
    assert (tmp_path / "r" / "fig" / "verdicts-per-night.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main([*common, "--history", str(earlier)], layout=collection.layout) == cli.EXIT_USAGE


REPRO_SWEEP = """\
import json
import widget
sweep = [{"length": n, "dkv": 2e-3 * widget.VALUE, "dkv_floor": 1e-3} for n in (1024, 2048)]
print("EVIDENCE " + json.dumps({"sweep": sweep, "value": widget.VALUE}))
print("FIX_VALIDATED" if widget.VALUE >= 2 else "BUG_REPRODUCED")
"""
