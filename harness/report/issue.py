"""The upstream issue body of one pack, in the target repository's own template, section by section.

Templates, as read from the repositories (2026-08 snapshots):
- linkedin/Liger-Kernel `.github/ISSUE_TEMPLATE/bug_report.yaml`: "🐛 Describe the bug", "Reproduce", "Versions"
  (the output of `python -m liger_kernel.env_report`, whose ten lines are written here from the receipt).
- NVIDIA/Megatron-LM `.github/ISSUE_TEMPLATE/bug_report.md`: **Describe the bug**, **Steps/Code to reproduce bug**,
  **Expected behavior**, **Additional context**; its regression form (`regression.md`) for a bug that came in
  with a later commit (a regression bisect on record).
- tile-ai/tilelang `.github/ISSUE_TEMPLATE/bug-report.yml`: Required prerequisites, the TileLang version, System
  information (what `python -m torch.utils.collect_env` reports), Problem description, Reproducible example code,
  Traceback, Expected behavior, Additional context; and a regression test in its `testing/python/issue/` layout.
- state-spaces/mamba has no template: a plain bug form (what breaks, reproduce, observed and expected,
  environment, the fix, scope).

Every body carries the reproducer inline (collapsed when long), the numbers or the exact error from the latest
receipt, steps that work from a clean checkout, the patch's summary, what is claimed and what is not, and a
banner when upstream has already fixed the bug."""

from __future__ import annotations

import re
from typing import Any

from ..core.evidence import nodes
from ..core.layout import Layout
from ..core.manifest import Pack
from . import receipts
from .markdown import headline

COLLAPSE_LINES = 40
TEMPLATES = {  # repo -> (template name, the headings a body must have, in order)
    "linkedin/Liger-Kernel": ("bug_report.yaml", ["### 🐛 Describe the bug", "### Reproduce", "### Versions"]),
    "NVIDIA/Megatron-LM": ("bug_report.md", ["**Describe the bug**", "**Steps/Code to reproduce bug**",
                                             "**Expected behavior**", "**Additional context**"]),
    "tile-ai/tilelang": ("bug-report.yml", ["### Required prerequisites", "### What version of TileLang are you using?",
                                            "### System information", "### Problem description",
                                            "### Reproducible example code", "### Traceback", "### Expected behavior",
                                            "### Additional context"]),
    "state-spaces/mamba": ("plain", ["### What breaks", "### Reproduce", "### Observed", "### Expected",
                                     "### Environment", "### The fix", "### Scope"]),
}
MEGATRON_REGRESSION = ["**Describe the regression**", "**To Reproduce**", "**Previous performance**",
                       "**New performance**", "**Stack trace/logs**",
                       "**Environment (please complete the following information):**", "**Proposed fix**",
                       "**Additional context**"]


def template_of(pack: Pack) -> tuple[str, list[str]]:
    return TEMPLATES.get(pack.repo, TEMPLATES["state-spaces/mamba"])


# ---------------------------------------------------------------- facts shared by every template


def pins(pack: Pack, layout: Layout, python: str = "3.12") -> list[str]:
    """What the reproducer imports, pinned as the pack's stack locks it (its base stage's)."""
    from ..envs import locks  # noqa: PLC0415 - report reads the stack's lock only here

    wanted = [re.split(r"[<>=!~ ;]", d, maxsplit=1)[0] for d in pack.python_deps]
    wanted += [w.split("==")[0] for w in (pack.compiler.base_wheels if pack.compiler else pack.wheels)]
    try:
        lock = locks.load(layout, pack.stack, python, "linux-x86_64") if pack.stack else None
    except locks.StackError:
        lock = None
    out = []
    for name in dict.fromkeys(wanted):
        pin = lock.pin(name) if lock else None
        out.append(f"{pin.name}=={pin.version}" if pin else name)
    return out


def companion_folder(c) -> str:
    """The folder a companion's checkout goes to: its repository's name."""
    return c.repo.split("/")[1]


def pythonpath(pack: Pack, root: str = "upstream") -> str:
    """PYTHONPATH for the export folder: skip-init/ (when a package's top-level __init__ is skipped), the
    checkout's import paths, then each companion's."""
    parts = ["skip-init"] if pack.skip_init or any(c.skip_init for c in pack.companions) else []
    parts += [f"{root}/{p}".rstrip("/.") or root for p in pack.import_paths]
    for c in pack.companions:
        parts += [f"{companion_folder(c)}/{p}".rstrip("/.") for p in c.import_paths]
    return ":".join(dict.fromkeys(parts))


PY_VERSION = "$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])')"


def _install(pack: Pack, layout: Layout, locked: bool, stack: str | None, wheels: tuple[str, ...]) -> str:
    if locked and stack:
        return f"pip install --require-hashes --no-deps -r requirements-{stack}-py{PY_VERSION}.txt"
    return f"pip install {' '.join(pins(pack, layout) if not wheels else wheels)}"


def steps(pack: Pack, layout: Layout, seen: dict[str, str | None], locked: bool = False) -> list[str]:
    """Shell lines that reproduce from a clean machine, run in the folder that holds repro.py (and the
    patch). locked: install the stack's hash-pinned lock shipped next to it (an export) instead of the
    readable pins (an issue body)."""
    venv = "python3 -m venv .venv && . .venv/bin/activate"
    if pack.is_compiler:
        fix = pack.compiler
        fixed_stack = fix.fixed_stack or pack.stack
        return [venv, _install(pack, layout, locked, pack.stack, () if locked else fix.base_wheels),
                f"python repro.py   # -> {seen.get('clean') or 'BUG_REPRODUCED'}",
                f"{_install(pack, layout, locked, fixed_stack, () if locked else fix.fixed_wheels)}   "
                f"# {fix.fixed_release}, contains {fix.fix_commit[:12]}",
                f"python repro.py   # -> {seen.get('fixed-release') or 'FIX_VALIDATED'}"]
    # one commit, as the runner fetches it: no history to download, and any server that serves that commit
    lines = ["git init -q upstream",
             f"git -C upstream fetch -q --depth 1 https://github.com/{pack.repo} {pack.base_commit}   "
             f"# {pack.base_ref}" + (f"; the same code as the release {pack.sdist}" if pack.sdist else ""),
             "git -C upstream -c advice.detachedHead=false checkout -q FETCH_HEAD"]
    for c in pack.companions:  # the release's tag: the same files as its sdist, without building anything
        folder = companion_folder(c)
        lines += [f"git init -q {folder} && git -C {folder} fetch -q --depth 1 https://github.com/{c.repo} tag "
                  f"{c.ref}   # {c.sdist}, imported unpatched",
                  f"git -C {folder} -c advice.detachedHead=false checkout -q {c.ref}"]
    install = _install(pack, layout, locked, pack.stack, ())
    lines += [venv, *([install] if install.strip() != "pip install" else [])]
    return [*lines, *run_and_fix(pack, seen, f"PYTHONPATH={pythonpath(pack)} python repro.py")]


def run_and_fix(pack: Pack, seen: dict[str, str | None], run: str) -> list[str]:
    """The reproducer's command, then (a bugfix pack) the patch and the command again, each with the
    sentinel the latest receipt recorded."""
    if pack.is_contract:
        return [f"{run}   # -> {seen.get('contract') or 'CONTRACT_HELD or CONTRACT_BROKEN'}"]
    return [f"{run}   # -> {seen.get('clean') or 'BUG_REPRODUCED'}",
            f"git -C upstream apply ../{pack.patch_path.name}   # the fix",
            f"{run}   # -> {seen.get('patched') or 'FIX_VALIDATED'}"]


def skip_init_note(pack: Pack) -> list[str]:
    names = [*pack.skip_init, *(n for c in pack.companions for n in c.skip_init)]
    if not names:
        return []
    return [f"`{', '.join(names)}`: its top-level `__init__` imports a compiled extension these kernels never "
            "use; `skip-init/sitecustomize.py` (attached) registers the package without running that `__init__`, "
            "so nothing needs building."]


def errors_of(receipt: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(stage, message) of every exception text a stage's EVIDENCE recorded (keys named error / raised)."""
    found = []
    for stage in (receipt or {}).get("stages", []):
        for key, value in nodes(stage.get("evidence") or {}).items():
            if isinstance(value, str) and re.search(r"(^|\.)(error|raised)$", key) and value:
                found.append((stage["name"], value))
    return found


def what_breaks(pack: Pack) -> list[str]:
    """The bug, or for a contract pack the contract and how it breaks silently."""
    if pack.is_contract:
        return [f"**The contract.** {pack.claim['contract']}", "",
                f"**How it breaks silently.** {pack.claim['breaks']}"]
    return [pack.claim["bug"]]


def observed(pack: Pack, receipt: dict[str, Any] | None) -> list[str]:
    if receipt is None:
        where = "a CPU is enough for this pack" if not pack.gpu else "on a GPU"
        return [f"No receipt yet: run `python runner.py --pack {pack.id} --receipt` ({where})."]
    labels = {"clean": "current code", "patched": "with the patch", "contract": "at this ref",
              "fixed-release": f"with {pack.compiler.fixed_release}" if pack.compiler else "fixed release"}
    gpu = (receipt["environment"].get("torch") or {}).get("cuda", {}).get("device_name") or "a CPU"
    out = [f"Measured on {gpu}, {receipt['date'][:10]} (verdict {receipt['verdict']}):", ""]
    for stage in receipt["stages"]:
        out.append(f"- {labels.get(stage['name'], stage['name'])}: `{stage['sentinel']}`; "
                   f"{headline(stage['evidence'], pack.headline, limit=8)}")
    return out


def versions(receipt: dict[str, Any] | None) -> dict[str, str]:
    env = (receipt or {}).get("environment") or {}
    torch = env.get("torch") or {}
    cuda = torch.get("cuda") or {}
    packages = env.get("packages") or {}
    return {"os": env.get("os") or env.get("platform") or "not recorded", "platform": env.get("platform") or "",
            "python": env.get("python") or "not recorded", "torch": torch.get("version") or "not recorded",
            "cuda": (cuda.get("runtime") if cuda.get("available") else None) or "Not available",
            "gpu": cuda.get("device_name") or "none", "capability": cuda.get("capability") or "",
            "driver": cuda.get("driver") or "not recorded", "nccl": env.get("nccl") or "not recorded",
            "nvcc": env.get("nvcc") or "not recorded", "cudnn": env.get("cudnn") or "not recorded",
            "cpu": env.get("cpu") or "not recorded", **{f"pkg:{k}": v for k, v in packages.items() if v}}


def fixed_banner(pack: Pack, layout: Layout) -> list[str]:
    """A banner when a receipt says upstream fixed the bug at some ref (or the manifest names the fix)."""
    fixed_at = []
    for path in sorted(layout.evidence.glob(f"{pack.name}.at-*.json")):
        r = receipts.load(path)
        if r.get("verdict") == "FIXED_UPSTREAM":
            fixed_at.append(f"{r['target']['ref']} (`{(r['target'].get('commit') or '')[:12]}`)")
    by = pack.upstream.get("fixed_by")
    if not fixed_at and not by:
        return []
    where = ", ".join(fixed_at) or "upstream"
    return [f"> **Already fixed upstream** at {where}" + (f", by {by}" if by else "") +
            f". This report is for the released code at {pack.base_ref}, and for anyone still on it.", ""]


def patch_summary(pack: Pack) -> list[str]:
    if not pack.has_patch or not pack.patch_path.is_file():
        return []
    text = pack.patch_path.read_text(encoding="utf-8", errors="replace")
    subject = re.search(r"^Subject: (?:\[PATCH[^\]]*\] )?(.*(?:\n [^\n]*)*)", text, re.MULTILINE)
    stat = [ln.strip() for ln in text.split("\n---\n", 1)[-1].split("\ndiff --git", 1)[0].splitlines() if "|" in ln
            or "changed" in ln]
    out = [f"`{pack.patch_path.name}` ({subject.group(1).replace(chr(10) + ' ', ' ') if subject else 'the fix'}):", ""]
    out += [f"    {s}" for s in stat] + ["", pack.claim["fix"]]
    return out


def inline_code(pack: Pack) -> list[str]:
    source = pack.repro_path.read_text(encoding="utf-8")
    block = ["```python", source.rstrip(), "```"]
    if source.count("\n") > COLLAPSE_LINES:
        return ["<details><summary>repro.py (" + str(source.count("\n")) + " lines)</summary>", "", *block, "",
                "</details>"]
    return block


def expected(pack: Pack) -> str:
    if pack.is_contract:
        return pack.claim["contract"]
    return f"The fixed behaviour: {pack.claim['fix']}"


def shell(lines: list[str]) -> list[str]:
    return ["```bash", *lines, "```"]


def reproduce(pack: Pack, layout: Layout, seen: dict[str, str | None]) -> list[str]:
    attached = ["`repro.py"] + [f"`{p.name}" for p in pack.module_paths]
    if pack.has_patch:
        attached.append(f"`{pack.patch_path.name}")
    note = skip_init_note(pack)
    return [f"In a folder holding {', '.join(a + '`' for a in attached)} (attached"
            + (", with `skip-init/sitecustomize.py`" if note else "") + "):", "", *shell(steps(pack, layout, seen)),
            *(["", *note] if note else [])]


# ---------------------------------------------------------------- templates


def _liger(pack, receipt, layout, seen) -> list[str]:
    v = versions(receipt)
    liger = v.get("pkg:liger-kernel") or f"the checkout of {pack.base_ref} (src/ on PYTHONPATH)"
    report = ["Environment Report:", "-------------------", f"Operating System: {v['platform'] or v['os']}",
              f"Python version: {v['python']}",
              f"Liger Kernel version: {liger}",
              f"PyTorch version: {v['torch']}", f"CUDA version: {v['cuda']}", "HIP(ROCm) version: Not available",
              f"Triton version: {v.get('pkg:triton', 'Not installed')}",
              f"Transformers version: {v.get('pkg:transformers', 'Not installed')}", "XPU version: XPU Not Available"]
    return [*fixed_banner(pack, layout), "### 🐛 Describe the bug", "", *what_breaks(pack),
            "", *observed(pack, receipt), "", "### Reproduce", "", *reproduce(pack, layout, seen), "",
            *inline_code(pack), "", *_errors(receipt), "### Versions", "", "```", *report, "```", "",
            f"Hardware: {v['gpu']}" + (f" (sm {v['capability']})" if v["capability"] else "") +
            f", driver {v['driver']}.", "", *_fix_and_scope(pack)]


def _megatron(pack, receipt, layout, seen) -> list[str]:
    v = versions(receipt)
    return [*fixed_banner(pack, layout), "**Describe the bug**", "", *what_breaks(pack), "",
            *observed(pack, receipt), "", "**Steps/Code to reproduce bug**", "", *reproduce(pack, layout, seen), "",
            *inline_code(pack), "", *_errors(receipt), "**Expected behavior**", "", expected(pack), "",
            "**Additional context**", "",
            f"- Megatron-LM commit: `{(receipt or {}).get('target', {}).get('commit') or pack.base_commit}` "
            f"({pack.base_ref}); PyTorch {v['torch']}, CUDA {v['cuda']}, NCCL {v['nccl']}; GPU {v['gpu']}", "",
            *_fix_and_scope(pack)]


def _tilelang(pack, receipt, layout, seen) -> list[str]:
    v = versions(receipt)
    pinned = [p.split("==")[1] for p in pins(pack, layout) if p.startswith("tilelang==")]
    version = v.get("pkg:tilelang") or (pinned[0] if pinned else "not recorded")
    system = [f"- Installed with pip (wheels): {' '.join(pins(pack, layout))}", f"- Python {v['python']}",
              f"- PyTorch version: {v['torch']}; CUDA used to build PyTorch: {v['cuda']}",
              f"- OS: {v['os']}; Python platform: {v['platform']}",
              f"- GPU models and configuration: {v['gpu']}; Nvidia driver version: {v['driver']}",
              f"- CUDA runtime version (nvcc): {v['nvcc']}; cuDNN version: {v['cudnn']}", f"- CPU: {v['cpu']}"]
    traces = [msg for _, msg in errors_of(receipt)]
    return [*fixed_banner(pack, layout), "### Required prerequisites", "",
            "- [ ] I have read the documentation <https://tilelang.com>.",
            "- [ ] I have searched the [Issue Tracker](https://github.com/tile-ai/tilelang/issues) that this hasn't "
            "already been reported. (comment there if it has.)", "",
            "_(For the person filing: tick these yourself.)_", "", "### What version of TileLang are you using?", "",
            version, "", "### System information", "", *system, "", "### Problem description", "",
            *what_breaks(pack), "", *observed(pack, receipt), "",
            "### Reproducible example code", "", "The Python snippets:", "", *inline_code(pack), "",
            *reproduce(pack, layout, seen), "", "### Traceback", "",
            *(["```pytb", *traces, "```"] if traces else ["_No traceback: the reproducer measures and prints._"]), "",
            "### Expected behavior", "", expected(pack), "", "### Additional context", "", *_fix_and_scope(pack),
            *(["", "A regression test in `testing/python/issue/` (below).", "", "```python",
               regression_test(pack).rstrip(), "```"] if pack.is_compiler else [])]


def _plain(pack, receipt, layout, seen) -> list[str]:
    v = versions(receipt)
    return [*fixed_banner(pack, layout), "### What breaks", "", *what_breaks(pack), "",
            "### Reproduce", "", *reproduce(pack, layout, seen), "", *inline_code(pack), "",
            "### Observed", "", *observed(pack, receipt), "", *_errors(receipt), "### Expected", "", expected(pack), "",
            "### Environment", "", f"- GPU {v['gpu']}" + (f" (sm {v['capability']})" if v["capability"] else "") +
            f", driver {v['driver']}", f"- Python {v['python']}, PyTorch {v['torch']} (CUDA {v['cuda']}), triton "
            f"{v.get('pkg:triton', 'n/a')}, tilelang {v.get('pkg:tilelang', 'n/a')}",
            f"- {pack.repo} at {pack.base_ref} (`{pack.base_commit[:12]}`)", "",
            "### The fix", "", *(patch_summary(pack) or [pack.claim.get("fix", "(A contract: no patch.)")]), "",
            "### Scope", "", pack.claim["scope"], "", f"Not claimed: {pack.claim['not_claimed']}", "", *_links(pack)]


def _errors(receipt) -> list[str]:
    found = errors_of(receipt)
    if not found:
        return []
    return ["The exact error:", "", "```", *[f"[{stage}] {msg}" for stage, msg in found], "```", ""]


def _fix_and_scope(pack: Pack) -> list[str]:
    fix = patch_summary(pack) or ([f"The fix is upstream's {pack.compiler.fix_commit[:12]}, first released in "
                                   f"{pack.compiler.fixed_release}; nothing is patched here."] if pack.is_compiler
                                  else ["(A contract: no patch.)"])
    return ["**The fix**" if pack.repo == "NVIDIA/Megatron-LM" else "The fix:", "", *fix, "",
            f"Scope: {pack.claim['scope']}", "", f"Not claimed: {pack.claim['not_claimed']}", "", *_links(pack)]


def _links(pack: Pack) -> list[str]:
    return ["Links: " + ", ".join([pack.upstream["thread"], *pack.upstream.get("related", [])]), "",
            f"_Upstream status as we know it: {pack.upstream['status']}_"]


RENDER = {"linkedin/Liger-Kernel": _liger, "NVIDIA/Megatron-LM": _megatron, "tile-ai/tilelang": _tilelang}


def body(pack: Pack, receipt: dict[str, Any] | None, layout: Layout) -> str:
    seen = {s["name"]: s.get("sentinel") for s in (receipt or {}).get("stages", [])}
    lines = [f"<!-- title: {pack.title} -->", "", *RENDER.get(pack.repo, _plain)(pack, receipt, layout, seen)]
    return "\n".join(lines).rstrip() + "\n"


def regression_test(pack: Pack) -> str:
    """For a compiler pack: the reproducer as a test in tilelang's testing/python/issue/ layout."""
    number = re.search(r"/(?:issues|pull)/(\d+)", pack.upstream["thread"])
    name = f"test_tilelang_issue_{number.group(1)}" if number else f"test_tilelang_{pack.slug.replace('-', '_')}"
    repro = f"repro_{pack.slug.replace('-', '_')}.py"
    return (f'"""Regression test for {pack.upstream["thread"]}: {pack.title}."""\n\n'
            "import subprocess\nimport sys\nfrom pathlib import Path\n\nimport tilelang.testing\n\n"
            f"REPRO = Path(__file__).with_name({repro!r})  # the reproducer, saved next to this file\n\n\n"
            f"def {name}():\n"
            "    out = subprocess.run([sys.executable, str(REPRO)], capture_output=True, text=True, timeout=600)\n"
            "    assert out.returncode == 0, out.stderr[-2000:]\n"
            "    assert \"FIX_VALIDATED\" in out.stdout.splitlines(), out.stdout[-2000:]\n\n\n"
            "if __name__ == \"__main__\":\n    tilelang.testing.main()\n")
