import sys
import time

from harness.run.execution import run_command


def test_output_and_log_kept(tmp_path):
    done = run_command([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                       tmp_path, {}, 30, tmp_path / "logs" / "stage.log", header="# hdr\n")
    assert done.exit_code == 0 and not done.timed_out and done.stdout_tail.strip() == "out"
    log = (tmp_path / "logs" / "stage.log").read_text()
    assert log.startswith("# hdr\n") and "out" in log and "err" in log


def test_timeout_kills_the_process_group(tmp_path):
    marker = tmp_path / "child-survived"
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3); open(r\"{marker}\", \"w\")'])\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    done = run_command([sys.executable, "-c", code], tmp_path, {}, 1, tmp_path / "t.log")
    assert done.timed_out and done.exit_code is None
    assert time.monotonic() - start < 20
    time.sleep(4)
    assert not marker.exists(), "a grandchild outlived the timeout"


def test_crash_exit_code(tmp_path):
    done = run_command([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, {}, 30, tmp_path / "c.log")
    assert done.exit_code == 3 and not done.timed_out
