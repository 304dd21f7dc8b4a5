import json
import threading
from concurrent.futures import ThreadPoolExecutor

from harness.envs import probe as environment
from harness.run import pipeline

from .conftest import REPRO_OK, run


def test_confirmed_at_the_pinned_base(collection, upstream, opts):
    folder = collection.add_pack("01", "toy", upstream.base)
    result = run(collection, opts, folder)
    assert result.verdict == "CONFIRMED", result.reason
    assert result.as_expected and result.commit == upstream.base
    assert [s.sentinel for s in result.stages] == ["BUG_REPRODUCED", "FIX_VALIDATED"]
    assert result.stages[0].evidence == {"value": 1, "threshold": 2}
    assert result.patch["status"] == "applied"
    assert not (opts().run_dir / "01-toy" / "work").exists(), "work copies are removed without --keep"
    assert (opts().run_dir / "01-toy" / "clean.log").is_file()


def test_fixed_upstream_on_a_later_ref(collection, upstream, opts):
    folder = collection.add_pack("01", "toy", upstream.base, expect='[expect]\nmain = "FIXED_UPSTREAM"')
    result = run(collection, opts, folder, upstream_ref="main")
    assert result.verdict == "FIXED_UPSTREAM" and result.as_expected
    assert result.commit == upstream.fixed and len(result.stages) == 1


def test_patch_conflict_while_the_bug_is_live(collection, upstream, opts):
    # a reproducer that still sees the bug at the later ref, whose lines the patch no longer matches
    repro = REPRO_OK.replace("widget.VALUE >= 2", "widget.OTHER == 'a'")
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    result = run(collection, opts, folder, upstream_ref="main")
    assert result.verdict == "PATCH_CONFLICT"
    assert "src/widget/__init__.py: hunk at line 1" in result.reason


def test_fix_failed(collection, upstream, opts):
    repro = REPRO_OK.replace("widget.VALUE >= 2", "widget.VALUE >= 3")
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    result = run(collection, opts, folder)
    assert result.verdict == "FIX_FAILED" and not result.as_expected


def test_crash_is_an_error_not_a_sentinel(collection, upstream, opts):
    repro = 'print("EVIDENCE {\\"a\\": 1}")\nprint("BUG_REPRODUCED")\nraise RuntimeError("boom")\n'
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    result = run(collection, opts, folder)
    assert result.verdict == "ERROR"
    assert result.stages[0].sentinel is None and "exit code 1" in result.stages[0].error


def test_malformed_protocol_is_an_error(collection, upstream, opts):
    repro = 'print("EVIDENCE {\\"a\\": 1}")\nprint("BUG_REPRODUCED")\nprint("FIX_VALIDATED")\n'
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    result = run(collection, opts, folder)
    assert result.verdict == "ERROR" and "found 2" in result.reason


def test_timeout(collection, upstream, opts):
    folder = collection.add_pack("01", "toy", upstream.base, repro="import time\ntime.sleep(60)\n")
    result = run(collection, opts, folder, timeout_s=1)
    assert result.verdict == "TIMEOUT"


def test_no_gpu_still_fetches_and_patches_then_skips(collection, upstream, opts, monkeypatch):
    monkeypatch.setattr(environment, "probe", lambda *a, **k: {
        "python": "3", "packages": {}, "torch": {"importable": True, "version": "2.11",
                                               "cuda": {"available": False, "runtime": None}}})
    folder = collection.add_pack("01", "toy", upstream.base, gpu="true")
    result = run(collection, opts, folder)
    assert result.verdict == "SKIPPED" and "no NVIDIA GPU here" in result.reason
    assert result.patch["status"] == "applied" and result.source["commit"] == upstream.base
    assert result.stages == []


def test_missing_dependency_skips(collection, upstream, opts):
    folder = collection.add_pack("01", "toy", upstream.base,
                                 extra_requires='python_deps = ["surely-not-installed-pkg>=1"]')
    result = run(collection, opts, folder)
    assert result.verdict == "SKIPPED" and "surely-not-installed-pkg" in result.reason


def test_check_only_runs_no_reproducer(collection, upstream, opts):
    folder = collection.add_pack("01", "toy", upstream.base, repro="raise SystemExit('must not run')\n")
    result = run(collection, opts, folder, check_only=True)
    assert result.verdict == "CHECKED" and result.as_expected and result.stages == []


def test_skip_init_registers_a_bare_package(collection, upstream, opts):
    # widget/__init__.py would set VALUE; with skip_init it must not run, yet submodules import
    repro = (
        "import json, os, sys, widget\n"
        "ran = hasattr(widget, 'VALUE')\n"
        "print('EVIDENCE ' + json.dumps({'init_ran': ran, 'skipped': os.environ.get('REPRO_SKIPPED_INIT')}))\n"
        "print('BUG_REPRODUCED' if not ran else 'INCONCLUSIVE')\n"
    )
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    text = (folder / "pack.toml").read_text().replace('paths = ["src"]', 'paths = ["src"]\nskip_init = ["widget"]')
    (folder / "pack.toml").write_text(text)
    result = run(collection, opts, folder)
    assert result.stages[0].evidence == {"init_ran": False, "skipped": "widget"}


def test_artifacts_dir_is_shared_between_stages(collection, upstream, opts):
    repro = (
        "import json, os, pathlib, widget\n"
        "ref = pathlib.Path(os.environ['REPRO_ARTIFACTS']) / 'ref.json'\n"
        "if not ref.exists():\n"
        "    ref.write_text(json.dumps(widget.VALUE))\n"
        "    print('EVIDENCE ' + json.dumps({'saved': widget.VALUE}))\n    print('BUG_REPRODUCED')\n"
        "else:\n"
        "    print('EVIDENCE ' + json.dumps({'before': json.loads(ref.read_text()), 'now': widget.VALUE}))\n"
        "    print('FIX_VALIDATED')\n"
    )
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    result = run(collection, opts, folder)
    assert result.verdict == "CONFIRMED"
    assert result.stages[1].evidence == {"before": 1, "now": 2}
    json.dumps(result.to_dict(), default=str)  # the whole result serialises


def test_unreachable_upstream_is_a_skip_not_an_error(collection, upstream, opts, monkeypatch):
    # git itself sends the upstream URL to a host that does not resolve: no network, no mirror
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "url.https://nowhere.invalid/widget.insteadOf")
    folder = collection.add_pack("01", "toy", upstream.base)
    result = run(collection, opts, folder)
    assert result.verdict == "SKIPPED" and "cannot be reached" in result.reason


def test_a_wrong_commit_is_still_an_error(collection, upstream, opts):
    folder = collection.add_pack("01", "toy", "0" * 40)
    result = run(collection, opts, folder)
    assert result.verdict == "ERROR"


def test_inconclusive_clean_stage_still_runs_the_patched_stage(collection, upstream, opts):
    repro = "print('EVIDENCE {\"effect\": 1.4}')\nprint('INCONCLUSIVE')\n"
    folder = collection.add_pack("01", "toy", upstream.base, repro=repro)
    result = run(collection, opts, folder)
    assert result.verdict == "INCONCLUSIVE" and [s.name for s in result.stages] == ["clean", "patched"]
    assert not result.as_expected  # expected at the base: CONFIRMED, unless [expect] names the base ref


def test_two_machine_looks_run_side_by_side_and_one_may_ask_for_another(monkeypatch):
    """Each key is looked at once a run; the probes of two environments do not wait for each other."""
    monkeypatch.setattr(pipeline, "_MACHINE", {})
    both = threading.Barrier(2, timeout=10)  # broken (an error) if the second look waited for the first
    calls = []

    def look() -> dict:
        both.wait()
        return {"inner": pipeline._machine("gpus", lambda: calls.append(1) or {"count": 0})}

    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda key: pipeline._machine(key, look), ["envprobe:a", "envprobe:b"]))
    assert found == [{"inner": {"count": 0}}] * 2 and calls == [1]
    assert pipeline._machine("envprobe:a", lambda: {"again": True}) == found[0]
