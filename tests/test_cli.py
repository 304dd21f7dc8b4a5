import json

import pytest

from harness.cli import main as cli


def test_usage_without_action(collection, capsys):
    assert cli.main([], layout=collection.layout) == cli.EXIT_USAGE


def test_traversal_pack_id_is_a_usage_error(collection, capsys):
    assert cli.main(["--pack", "../../etc"], layout=collection.layout) == cli.EXIT_USAGE
    assert "not a pack id" in capsys.readouterr().err


def test_run_json_junit_and_exit_codes(collection, upstream, cache, tmp_path, capsys):
    collection.add_pack("01", "toy", upstream.base)
    args = ["--pack", "01", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"),
            "--json", str(tmp_path / "o.json"), "--junit", str(tmp_path / "o.xml")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "CONFIRMED" in out and "EVIDENCE" in out
    assert json.loads((tmp_path / "o.json").read_text())["packs"][0]["verdict"] == "CONFIRMED"
    # main without an [expect] entry: FIXED_UPSTREAM is a healthy state
    assert cli.main([*args, "--upstream", "main"], layout=collection.layout) == cli.EXIT_OK
    # an unlisted tag: also a healthy state
    assert cli.main([*args, "--upstream", "v1.1"], layout=collection.layout) == cli.EXIT_OK


def test_unexpected_verdicts_exit_non_zero(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "toy", upstream.base, expect='[expect]\nmain = "CONFIRMED"')
    collection.add_pack("02", "bad", upstream.base, repro="raise SystemExit(1)\n")
    common = ["--cache-dir", str(cache), "--run-dir", str(tmp_path / "r")]
    # the pack says main should still be CONFIRMED, but upstream fixed it
    assert cli.main(["--pack", "01", "--upstream", "main", *common], layout=collection.layout) == cli.EXIT_UNEXPECTED
    assert cli.main(["--pack", "02", *common], layout=collection.layout) == cli.EXIT_UNEXPECTED


def test_list_and_lint(collection, upstream, capsys):
    collection.add_pack("01", "toy", upstream.base)
    assert cli.main(["--list"], layout=collection.layout) == cli.EXIT_OK
    assert "01" in capsys.readouterr().out
    assert cli.main(["--lint"], layout=collection.layout) == cli.EXIT_OK


def test_skip_exits_zero_unless_strict(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "toy", upstream.base, extra_requires='python_deps = ["surely-not-installed-pkg"]')
    base = ["--pack", "01", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r")]
    assert cli.main(base, layout=collection.layout) == cli.EXIT_OK
    assert cli.main([*base, "--strict"], layout=collection.layout) == cli.EXIT_UNEXPECTED


def test_a_python_without_the_runners_dependencies_gets_one_sentence_not_a_traceback(tmp_path):
    """runner.py with an interpreter that lacks rich (a system Python, nothing installed): exit 1 and what to
    do, no traceback."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    (tmp_path / "rich").mkdir()
    (tmp_path / "rich" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'rich'\", name='rich')\n")
    runner = Path(__file__).resolve().parent.parent / "runner.py"
    proc = subprocess.run([sys.executable, str(runner), "--list"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "the Python package 'rich' is missing" in proc.stderr and "pip install -e ." in proc.stderr


@pytest.mark.network
def test_a_bare_python_installs_the_runners_locked_dependencies_once(tmp_path):
    """runner.py with a Python that has only pip: the runner's lock goes into the cache (hash-checked), the
    second start reuses it silently, and a changed file there makes it install again."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from harness.envs import locks  # noqa: PLC0415

    if locks.host_platform() != "linux-x86_64":
        pytest.skip("the runner's lock is made for linux x86_64")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(tmp_path / "bare")], check=True, timeout=300)
    python = tmp_path / "bare" / "bin" / "python"
    runner = Path(__file__).resolve().parent.parent / "runner.py"
    env = {"PATH": "/usr/bin:/bin", "REPRO_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path), "COLUMNS": "300"}

    def start():
        return subprocess.run([str(python), str(runner), "--list"], capture_output=True, text=True, env=env,
                              timeout=900)

    first = start()
    if first.returncode != 0 and "pip install of" in first.stderr:
        pytest.skip(f"the package index cannot be reached: {first.stderr.strip()[-300:]}")
    assert first.returncode == 0 and "installing the runner's locked dependencies" in first.stderr, first.stderr
    assert "mamba3-mimo-bwd-grouped-heads" in first.stdout
    second = start()
    assert second.returncode == 0 and "installing" not in second.stderr, second.stderr
    site = next(p for p in (tmp_path / "cache" / "runner-site").iterdir() if p.is_dir())
    (site / "rich" / "__init__.py").write_text("raise ImportError('tampered')\n")
    third = start()
    assert third.returncode == 0 and "installing the runner's locked dependencies" in third.stderr, third.stderr
