"""Bad inputs, by class: nothing a pack, a bundle, a cache or a user's typo does can break a run, fool a verdict
or leave a process behind. Each case is one bad input; the test says what a clean handling is (an ERROR or
SKIPPED for that pack only, a one-line error and exit 2, a refusal before anything runs).

The parametrized cases below number over 150 (`pytest tests/test_adversarial.py --collect-only -q`), CPU only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.core import manifest, treehash
from harness.run import execution, sentinels
from harness.sources import patching
from harness.sources import upstream as sources

from .conftest import PATCH_FIX, REPRO_OK, run

# ---------------------------------------------------------------- protocol: what a reproducer prints

GOOD_EVIDENCE = 'EVIDENCE {"a": 1}'


@pytest.mark.parametrize("stdout, problem", [
    ('EVIDENCE {"a": NaN}\nBUG_REPRODUCED\n', "not a finite number"),
    ('EVIDENCE {"a": Infinity}\nBUG_REPRODUCED\n', "not a finite number"),
    ('EVIDENCE {"a": -Infinity}\nBUG_REPRODUCED\n', "not a finite number"),
    ('EVIDENCE {"a": 1e999}\nBUG_REPRODUCED\n', "non-finite number at 'a'"),
    ('EVIDENCE {"a": [1, {"b": -1e400}]}\nBUG_REPRODUCED\n', "non-finite number at 'a.1.b'"),
    ('EVIDENCE {"a": 1}\x1cBUG_REPRODUCED\n', "found 0"),
    ('EVIDENCE {"a": 1}\u2028BUG_REPRODUCED\n', "found 0"),
    ('EVIDENCE {"a": 1}\n BUG_REPRODUCED\n', "found 0"),
    ('EVIDENCE {"a": 1}\nBUG_REPRODUCED \n', "found 0"),
    ('EVIDENCE {"a": 1}\nBUG_REPRODUCED!\n', "found 0"),
    ('EVIDENCE {"a": 1}\nbug_reproduced\n', "found 0"),
    ('BUG_REPRODUCED\nEVIDENCE {"a": 1}\n', "must come before"),
    ('EVIDENCE {"a": 1}\nEVIDENCE {"a": 2}\nBUG_REPRODUCED\n', "found 2"),
    ('EVIDENCE {"a": 1}\nBUG_REPRODUCED\nFIX_VALIDATED\n', "found 2"),
    ('EVIDENCE [1, 2]\nBUG_REPRODUCED\n', "non-empty JSON object"),
    ('EVIDENCE {}\nBUG_REPRODUCED\n', "non-empty JSON object"),
    ('EVIDENCE "x"\nBUG_REPRODUCED\n', "non-empty JSON object"),
    ('EVIDENCE {"a": 1\nBUG_REPRODUCED\n', "not valid JSON"),
    ('EVIDENCE ' + "[" * 5000 + "]" * 5000 + '\nBUG_REPRODUCED\n', "JSON"),
    ('EVIDENCE {"a": 1}\nCONTRACT_HELD\n', "not one this pack may print"),
    ('EVIDENCE {"a": 1}\n', "found 0"),
    ('BUG_REPRODUCED\n', "found 0"),
    ('', "found 0"),
    ('EVIDENCE\nBUG_REPRODUCED\n', "not valid JSON"),
])
def test_malformed_protocol_is_never_trusted(stdout, problem):
    parsed = sentinels.parse(stdout)
    assert not parsed.ok and parsed.sentinel is None or parsed.problems
    assert any(problem in p for p in parsed.problems), parsed.problems


# ---------------------------------------------------------------- one pack cannot abort the run


def _run_cli(collection, cache, tmp_path, *argv):
    out = tmp_path / "o.json"
    code = cli.main([*argv, "--cache-dir", str(cache), "--run-dir", str(tmp_path / "runs"), "--json", str(out)],
                    layout=collection.layout)
    return code, json.loads(out.read_text()) if out.is_file() else None


HOSTILE_REPROS = {
    "non-utf8 stdout": "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe garbage\\n')\n" + REPRO_OK,
    "rich markup in evidence": REPRO_OK.replace('"threshold": 2}', '"threshold": 2, "note": "[/x] [bold]oops[/]"}'),
    "rich markup on stderr, crash": "import sys\nprint('[/x] [/] [red', file=sys.stderr)\nraise SystemExit(3)\n",
    "json list in evidence": REPRO_OK.replace('"threshold": 2}', '"threshold": 2, "flags": [True, True]}'),
    "nan in evidence": "print('EVIDENCE {\"a\": NaN}')\nprint('BUG_REPRODUCED')\n",
    "control characters": REPRO_OK.replace('"threshold": 2}', '"threshold": 2, "t": "\\x1b[31mred\\x07"}'),
    "huge chatter": "import sys\nsys.stdout.write('x' * 5_000_000 + '\\n')\n" + REPRO_OK,
    "binary junk on stderr": "import sys\nsys.stderr.buffer.write(bytes(range(256)))\n" + REPRO_OK,
    "closes stdout": "import os, sys\n" + REPRO_OK + "os.close(1)\n",
    "kills itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "exit 0 silently": "pass\n",
    "prints every sentinel": "print('EVIDENCE {\"a\": 1}')\nprint('BUG_REPRODUCED')\nprint('FIX_VALIDATED')\n",
    "evidence after sentinel": "print('BUG_REPRODUCED')\nprint('EVIDENCE {\"a\": 1}')\n",
    "syntax error": "def (:\n",
    "import error": "import no_such_module_anywhere\n",
    "infinite recursion": "def f(): return f()\nf()\n",
}


@pytest.mark.parametrize("name", list(HOSTILE_REPROS))
def test_a_hostile_reproducer_affects_its_own_pack_only(collection, upstream, cache, tmp_path, capsys, name):
    collection.add_pack("01", "first", upstream.base)
    collection.add_pack("02", "hostile", upstream.base, repro=HOSTILE_REPROS[name])
    collection.add_pack("03", "last", upstream.base)
    code, report = _run_cli(collection, cache, tmp_path, "--all")
    out = capsys.readouterr().out
    verdicts = {p["id"]: p["verdict"] for p in report["packs"]}
    assert verdicts["01"] == verdicts["03"] == "CONFIRMED", "the other packs ran and were reported"
    if name in ("rich markup in evidence", "json list in evidence"):
        assert verdicts["02"] == "CONFIRMED"
        shown = "[/x] [bold]oops[/]" if "markup" in name else '"flags": [true, true]'
        assert shown in out, "the console shows evidence verbatim"
    elif name in ("non-utf8 stdout", "binary junk on stderr", "huge chatter", "closes stdout"):
        assert verdicts["02"] == "CONFIRMED"
    elif name == "control characters":
        assert verdicts["02"] == "CONFIRMED" and "\\u001b[31mred\\u0007" in out, "escaped, never sent raw"
    else:
        assert verdicts["02"] == "ERROR" and code == cli.EXIT_UNEXPECTED
    if name == "rich markup on stderr, crash":
        assert "[/x] [/] [red" in out
    assert "Traceback" not in capsys.readouterr().err


def test_a_fault_of_the_runner_in_one_pack_is_that_packs_error(collection, upstream, cache, tmp_path, monkeypatch):
    collection.add_pack("01", "first", upstream.base)
    collection.add_pack("02", "second", upstream.base)
    from harness.run import pipeline

    real = pipeline.run_stage

    def explode(spec, tree, pack, *a, **k):
        if pack.id == "01":
            raise ZeroDivisionError("planted")
        return real(spec, tree, pack, *a, **k)

    monkeypatch.setattr(pipeline, "run_stage", explode)
    code, report = _run_cli(collection, cache, tmp_path, "--all")
    first, second = report["packs"]
    assert first["verdict"] == "ERROR" and "internal error while running the clean stage" in first["reason"]
    assert "ZeroDivisionError: planted" in first["reason"] and Path(first["log_dir"], "error.log").is_file()
    assert second["verdict"] == "CONFIRMED"


def test_an_sdist_with_a_link_member_is_that_packs_error(collection, upstream, cache, tmp_path, monkeypatch):
    import io
    import tarfile

    from harness.sources import pkgindex

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("widget-1.0/src/widget/__init__.py")
        data = b"VALUE = 1\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("widget-1.0/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    blob = buf.getvalue()
    import hashlib

    digest = hashlib.sha256(blob).hexdigest()
    monkeypatch.setattr(pkgindex, "find_sdist", lambda req: pkgindex.ReleaseFile("widget-1.0.tar.gz", "x", digest))
    monkeypatch.setattr(pkgindex, "download", lambda rel, dest, sha: (dest.mkdir(parents=True), (dest / rel.filename)
                                                                      .write_bytes(blob))[1] and dest / rel.filename)
    collection.add_pack("01", "toy", "0" * 40, sdist=f'sdist = "widget==1.0"\nsdist_sha256 = "{digest}"')
    collection.add_pack("02", "fine", upstream.base)
    code, report = _run_cli(collection, cache, tmp_path, "--all", "--source-kind", "sdist")
    first = report["packs"][0]
    assert first["verdict"] == "ERROR" and "is a link; refused" in first["reason"]


# ---------------------------------------------------------------- pristine cache and the other stage's tree


WRITES_OUTSIDE = {
    "the other tree": "import os, pathlib\nt = pathlib.Path(os.environ['REPRO_ARTIFACTS']).parent / 'work' / "
                      "'patched' / 'src' / 'widget' / '__init__.py'\n"
                      "if t.exists(): t.write_text('VALUE = 1  # poisoned\\n')\n",
    "the pristine cache": "import glob, os\n"
                          "for f in glob.glob(os.environ['CACHE'] + '/git/*/*/tree/src/widget/__init__.py'):\n"
                          "    os.chmod(f, 0o644); open(f, 'a').write('# poisoned\\n')\n",
    "a new file in the cache": "import glob, os\nfor d in glob.glob(os.environ['CACHE'] + '/git/*/*/tree'):\n"
                               "    os.chmod(d, 0o755); open(d + '/planted.py', 'w').write('x = 1\\n')\n",
    "a deleted file in the other tree": "import os, pathlib\nt = pathlib.Path(os.environ['REPRO_ARTIFACTS']).parent / "
                                        "'work' / 'patched' / 'docs.txt'\nif t.exists(): t.unlink()\n",
}


@pytest.mark.parametrize("where", list(WRITES_OUTSIDE))
def test_a_reproducer_writing_outside_its_tree_is_an_error_naming_the_path(collection, upstream, opts, cache,
                                                                             monkeypatch, where):
    monkeypatch.setenv("CACHE", str(cache))
    folder = collection.add_pack("01", "toy", upstream.base, repro=WRITES_OUTSIDE[where] + REPRO_OK)
    result = run(collection, opts, folder)
    assert result.verdict == "ERROR", result.reason
    assert "wrote outside its own work tree" in result.reason


def test_a_reproducer_may_write_its_own_tree_and_artifacts(collection, upstream, opts):
    repro = ("import os, pathlib\npathlib.Path('scratch.txt').write_text('x')\n"
             "pathlib.Path(os.environ['REPRO_ARTIFACTS'], 'saved.txt').write_text('x')\n" + REPRO_OK)
    result = run(collection, opts, collection.add_pack("01", "toy", upstream.base, repro=repro))
    assert result.verdict == "CONFIRMED", result.reason


CACHE_EDITS = {
    "edited, same size, mtime restored": lambda f: _same_size_edit(f),
    "deleted": lambda f: f.unlink(),
    "appended": lambda f: (f.chmod(0o644), f.write_text(f.read_text() + "# x\n")),
    "replaced by a link": lambda f: (f.unlink(), f.symlink_to("/etc/hostname")),
}


def _same_size_edit(f: Path) -> None:
    st = f.stat()
    f.chmod(0o644)
    text = f.read_text()
    f.write_text(text.replace("1", "2", 1))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("edit", list(CACHE_EDITS))
def test_a_cache_entry_changed_between_runs_is_fetched_again(collection, upstream, opts, cache, edit):
    folder = collection.add_pack("01", "toy", upstream.base)
    assert run(collection, opts, folder).verdict == "CONFIRMED"
    entry = next((cache / "git").glob("*/*"))
    target = entry / "tree" / "src" / "widget" / "__init__.py"
    target.parent.chmod(0o755)
    CACHE_EDITS[edit](target)
    result = run(collection, opts, folder)
    assert result.verdict == "CONFIRMED", result.reason
    assert target.read_text() == "VALUE = 1  # the bug\nOTHER = 'a'\n"


def test_a_bundle_cache_entry_changed_is_refused_naming_it(tmp_path):
    entry = tmp_path / "cache" / "git" / "acme+widget" / ("0" * 40)
    (entry / "tree").mkdir(parents=True)
    (entry / "tree" / "f.py").write_text("x = 1\n")
    files, _ = treehash.manifest(entry / "tree")
    (entry / "manifest.json").write_text(json.dumps({"files": files}))
    (entry / "source.json").write_text("{}")
    (tmp_path / "cache" / sources.OFFLINE_MARK).write_text("")
    (entry / "tree" / "f.py").write_text("x = 2\n")
    with pytest.raises(sources.SourceError, match=r"changed since it was bundled .*changed: f\.py"):
        sources.cached(entry, "acme/widget", lambda m: None)


# ---------------------------------------------------------------- time, signals and processes


def test_a_setsid_grandchild_holding_stdout_does_not_stretch_the_timeout(tmp_path):
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "time.sleep(120)\n")
    start = time.monotonic()
    done = execution.run_command([sys.executable, "-c", code], tmp_path, dict(os.environ), 3, tmp_path / "l.log")
    assert done.timed_out and time.monotonic() - start < 3 + execution.KILL_GRACE_S + 3 * execution.DRAIN_S
    time.sleep(0.5)
    assert not execution._token_pids(done.token), "no process carrying the stage's token survives"


def test_a_grandchild_left_behind_after_a_normal_exit_is_killed(tmp_path):
    marker = tmp_path / "alive"
    late = f"import time, pathlib\ntime.sleep(6)\npathlib.Path({str(marker)!r}).write_text('x')\n"
    (tmp_path / "late.py").write_text(late)
    code = ("import subprocess, sys\n"
            f"subprocess.Popen(['setsid', sys.executable, {str(tmp_path / 'late.py')!r}])\nprint('done')\n")
    start = time.monotonic()
    done = execution.run_command([sys.executable, "-c", code], tmp_path, dict(os.environ), 60, tmp_path / "l.log")
    assert done.exit_code == 0 and done.killed_leftovers >= 1 and time.monotonic() - start < 6
    time.sleep(7)
    assert not marker.exists()


def test_two_hundred_megabytes_of_output_stay_on_disk_not_in_memory(tmp_path):
    code = "import sys\nchunk = 'y' * 1023 + '\\n'\nfor _ in range(200 * 1024): sys.stdout.write(chunk)\n"
    done = execution.run_command([sys.executable, "-c", code], tmp_path, dict(os.environ), 120, tmp_path / "l.log")
    assert done.exit_code == 0 and len(done.stdout_tail) <= execution.TAIL_BYTES + 1024
    assert (tmp_path / "l.log").stat().st_size > 200 * 2**20


def test_the_log_is_written_as_the_output_comes(tmp_path):
    code = "import time\nprint('first line', flush=True)\ntime.sleep(30)\n"
    log = tmp_path / "l.log"
    runner = threading.Thread(target=execution.run_command,
                              args=([sys.executable, "-c", code], tmp_path, dict(os.environ), 4, log))
    runner.start()
    time.sleep(2)
    assert "first line" in log.read_text()
    runner.join()


def test_a_heartbeat_names_the_last_line(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "HEARTBEAT_S", 0.5)
    beats = []
    code = "import time\nprint('compiling mamba_mimo_bwd_bwd_kernel', flush=True)\ntime.sleep(2)\n"
    execution.run_command([sys.executable, "-c", code], tmp_path, dict(os.environ), 30, tmp_path / "l.log",
                          heartbeat=lambda t, line: beats.append(line))
    assert beats and beats[-1] == "compiling mamba_mimo_bwd_bwd_kernel"


def test_sigint_stops_the_stage_and_its_children_and_reports_what_finished(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "quick", upstream.base)
    collection.add_pack("02", "slow", upstream.base, repro="import subprocess, sys, time\n"
                        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\ntime.sleep(300)\n")
    collection.add_pack("03", "never", upstream.base)
    script = tmp_path / "go.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from harness.cli import main as cli
        from harness.core.layout import Layout
        layout = Layout(Path({str(collection.layout.root)!r}))
        sys.exit(cli.main(["--all", "--cache-dir", {str(cache)!r}, "--run-dir", {str(tmp_path / "runs")!r},
                           "--json", {str(tmp_path / "o.json")!r}], layout=layout))
        """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if list((tmp_path / "runs").glob("02-slow/clean.log")):
            break
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED, err[-2000:]
    report = json.loads((tmp_path / "o.json").read_text())
    verdicts = {p["id"]: (p["verdict"], p["reason"]) for p in report["packs"]}
    assert verdicts["01"][0] == "CONFIRMED"
    assert verdicts["02"][0] == "ERROR" and "interrupted" in verdicts["02"][1]
    assert verdicts["03"][0] == "ERROR" and "interrupted before this pack started" in verdicts["03"][1]
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", "time.sleep\\(300\\)"], capture_output=True, text=True).stdout.split()
    assert not leftover, "the slow stage's child was killed with it"
    assert not any((cache / "tmp").iterdir()) if (cache / "tmp").is_dir() else True
    assert not (tmp_path / "runs" / "02-slow" / "work").exists(), "work trees are cleaned"


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "", "1e3"])
def test_a_timeout_must_be_a_positive_whole_number(collection, value, capsys):
    assert cli.main(["--all", "--timeout", value], layout=collection.layout) == cli.EXIT_USAGE
    assert "--timeout" in capsys.readouterr().err


# ---------------------------------------------------------------- concurrency


def _one_run(args):
    root, cache, out, env = args
    os.environ.update(env)
    from harness.core.layout import Layout

    code = cli.main(["--all", "--cache-dir", cache, "--json", out], layout=Layout(Path(root)))
    return code


def test_eight_runs_at_once_on_one_cache_give_eight_correct_results(collection, upstream, cache, tmp_path):
    import multiprocessing

    collection.add_pack("01", "toy", upstream.base)
    env = {k: v for k, v in os.environ.items() if k.startswith("GIT_CONFIG")}
    outs = [str(tmp_path / f"o{i}.json") for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        codes = pool.map(_one_run, [(str(collection.layout.root), str(cache), o, env) for o in outs])
    assert codes == [0] * 8
    results = [json.loads(Path(o).read_text())["packs"][0] for o in outs]
    assert [r["verdict"] for r in results] == ["CONFIRMED"] * 8
    assert len({r["log_dir"] for r in results}) == 8, "each run has its own run folder"


def test_concurrent_ref_resolutions_lose_no_record(upstream, tmp_path):
    for i in range(6):
        subprocess.run(["git", "tag", f"t{i}", upstream.base], cwd=upstream.path, check=True)
    threads = [threading.Thread(target=sources.resolve_ref, args=("acme/widget", f"t{i}", tmp_path, lambda m: None))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = json.loads((tmp_path / "refs" / "acme+widget.json").read_text())
    assert set(records) == {f"t{i}" for i in range(6)}


# ---------------------------------------------------------------- inputs: refs, manifests, patches


@pytest.mark.parametrize("ref", ["*", "v*", "ma?n", "[mv]ain", "-x", "--upload-pack=touch", "a..b", "a b", "a\nb",
                                 "x" * 400, "main.lock", "a//b", "@{u}", "refs/heads/", "", "~1", "main^", "a:b",
                                 "a\\b", "\x00", "ma\tin", ".hidden/", "emoji-\u2603"])
def test_a_ref_that_is_not_one_name_is_refused_before_git_sees_it(collection, ref, capsys):
    assert cli.main(["--all", f"--upstream={ref}"], layout=collection.layout) == cli.EXIT_USAGE
    assert "is not a git ref this runner accepts" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["main", "v0.8.2", "core_v0.19.0", "release/1.2", "a" * 40, "pull/967/head"])
def test_ordinary_refs_are_accepted(ref):
    assert sources.check_ref(ref) == ref


def test_a_long_ref_gets_a_safe_receipt_name(collection, upstream):
    from harness.report import receipts

    pack = manifest.load_pack(collection.add_pack("01", "toy", upstream.base), collection.layout)
    name = receipts.receipt_path(pack, "release/" + "x" * 190, collection.layout).name
    assert len(name) < 120 and "/" not in name and name.endswith(".json")
    assert name != receipts.receipt_path(pack, "release/" + "x" * 189 + "y", collection.layout).name


MANIFESTS = {
    "not utf-8": b"id = \"01\"\nslug = \"toy\xff\"\n",
    "5000 deep": b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep table": ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n").encode(),
    "not toml": b"[[[\n",
    "empty": b"",
    "a list root": b"[[x]]\n",
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_a_broken_manifest_is_a_one_line_error(collection, upstream, capsys, name):
    folder = collection.add_pack("01", "toy", upstream.base)
    (folder / "pack.toml").write_bytes(MANIFESTS[name])
    assert cli.main(["--pack", "01"], layout=collection.layout) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "pack.toml" in err and "Traceback" not in err
    assert cli.main(["--lint"], layout=collection.layout) == cli.EXIT_UNEXPECTED


@pytest.mark.parametrize("folder, problem", [
    ("092-toy", "not an NN-slug pack folder"), ("7-toy", "not an NN-slug pack folder"),
    ("1000-toy", "not an NN-slug pack folder"), ("01-Toy", "not an NN-slug pack folder"),
    ("01_toy", "not an NN-slug pack folder"), ("01-toy-", "not an NN-slug pack folder"),
])
def test_lint_refuses_pack_folder_names_that_are_not_one_spelling(collection, folder, problem):
    (collection.layout.packs / folder).mkdir()
    assert any(problem in p for p in __import__("harness.checks.lint", fromlist=["lint"]).lint(collection.layout))


BAD_PATCHES = {
    "garbage": "this is not a patch\n",
    "empty": "",
    "dotdot path": PATCH_FIX.replace("a/src/widget/__init__.py", "a/../../etc/x").replace(
        "b/src/widget/__init__.py", "b/../../etc/x"),
    "absolute path": PATCH_FIX.replace("--- a/src/widget/__init__.py", "--- /etc/passwd"),
    "into .git": PATCH_FIX.replace("src/widget/__init__.py", ".git/config"),
    "creates a link": "diff --git a/evil b/evil\nnew file mode 120000\nindex 0000000..1111111\n--- /dev/null\n"
                      "+++ b/evil\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n",
    "makes a file a link": "diff --git a/docs.txt b/docs.txt\nold mode 100644\nnew mode 120000\n",
    "submodule": "diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000..1111111\n--- /dev/null\n+++ b/sub\n"
                 "@@ -0,0 +1 @@\n+Subproject commit 1111111111111111111111111111111111111111\n",
    "binary": "diff --git a/x.bin b/x.bin\nnew file mode 100644\nindex 0000000..1111111\nGIT binary patch\n"
              "literal 3\nKcmZ?wWB>pF0RR91\n\nliteral 0\nHcmV?d00001\n\n",
    "wrong hunk count": PATCH_FIX.replace("@@ -1,2 +1,2 @@", "@@ -1,5 +1,2 @@"),
    "not utf-8": b"diff --git a/x b/x\n\xff\xfe\n".decode("latin-1"),
    "control char path": PATCH_FIX.replace("src/widget/__init__.py", "src/wid\x01get.py"),
    "backslash path": PATCH_FIX.replace("src/widget/__init__.py", "src\\..\\..\\x"),
}


@pytest.mark.parametrize("name", list(BAD_PATCHES))
def test_a_patch_that_may_not_be_applied_is_refused_at_lint_and_run(collection, upstream, opts, name):
    folder = collection.add_pack("01", "toy", upstream.base, patch=None)
    path = collection.layout.patches / "01-toy.patch"
    path.write_bytes(BAD_PATCHES[name].encode("latin-1" if name == "not utf-8" else "utf-8"))
    assert patching.problems(path), "the parser refuses it"
    from harness.checks import lint

    assert any("01-toy" in p for p in lint.lint(collection.layout))
    result = run(collection, opts, folder)
    assert result.verdict == "ERROR" and "refused before anything runs" in result.reason, result.reason
    assert "PATCH_CONFLICT" not in result.reason and not result.stages


def test_a_patch_with_a_removed_line_that_looks_like_a_header_is_fine(tmp_path):
    patch = tmp_path / "p.patch"
    patch.write_text("diff --git a/q.sql b/q.sql\n--- a/q.sql\n+++ b/q.sql\n@@ -1,2 +1,2 @@\n--- a comment\n"
                     "+-- b comment\n select 1;\n")
    assert patching.problems(patch) == []


# ---------------------------------------------------------------- files the command names


def test_file_system_faults_are_one_line_errors(collection, upstream, tmp_path, capsys):
    collection.add_pack("01", "toy", upstream.base)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    cases = [
        (["--all", "--cache-dir", str(a_file)], "is a file"),
        (["--all", "--json", str(a_dir)], "is a folder"),
        (["--all", "--junit", str(a_file / "x.xml")], "is not a folder"),
        (["--all", "--markdown", str(a_dir)], "is a folder"),
        (["--all", "--interpreter", str(tmp_path / "no-python")], "no such executable"),
        (["--all", "--compare", str(tmp_path / "missing.json")], "not a readable --json report"),
        (["--all", "--compare", str(bad_json)], "not a readable --json report"),
        (["--all", "--compare", str(a_dir)], "not a readable --json report"),
        (["--all", "--run-dir", str(a_file)], "is a file"),
        (["--all", "--offline", str(a_dir)], "no bundle.json"),
        (["--all", "--offline", str(a_file)], "no bundle.json"),
        (["--merge", str(tmp_path / "missing.json"), "--json", str(tmp_path / "m.json")], "not a readable"),
        (["--merge", str(bad_json), "--json", str(tmp_path / "m.json")], "not a readable"),
        (["--pack", "99"], "no pack '99'"),
        (["--pack", "../../etc"], "not a pack id"),
        (["--report", "99"], "no pack '99'"),
        (["--export", "99", str(tmp_path / "x")], "no pack '99'"),
    ]
    for argv, message in cases:
        assert cli.main(argv, layout=collection.layout) == cli.EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_a_full_disk_is_a_one_line_error(collection, upstream, tmp_path, monkeypatch, capsys):
    collection.add_pack("01", "toy", upstream.base)
    from harness.core import fsutil

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fsutil, "atomic_write", full)
    code = cli.main(["--all", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"), "--json",
                     str(tmp_path / "o.json")], layout=collection.layout)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "No space left on device" in err and "Traceback" not in err


# ---------------------------------------------------------------- modes and their options


@pytest.mark.parametrize("argv, message", [
    (["--pack", "01", "--all"], "--pack and --all together"),
    (["--report", "01", "--json", "x.json"], "--json does not apply to --report"),
    (["--list", "--lint"], "one mode per call"),
    (["--pack", "01", "--status"], "one mode per call"),
    (["--bisect", "01", "--jobs", "4"], "--jobs does not apply to --bisect"),
    (["--bisect", "01", "--pack", "01"], "one mode per call"),
    (["--merge", "a.json", "--pack", "01"], "one mode per call"),
    (["--bundle", "b"], "--bundle needs the packs"),
    (["--provision"], "--provision needs the packs"),
    (["--provision", "--pack", "01", "--json", "x.json"], "--json does not apply to --provision"),
    (["--lint", "--strict"], "--strict does not apply to --lint"),
    (["--status", "--upstream", "main"], "--upstream does not apply to --status"),
    (["--export", "01", "d", "--receipt"], "--receipt does not apply to --export"),
    (["--pack", "01", "--python", "3.12"], "--python does not apply to a run"),
    (["--pack", "01", "--bundle-ref", "main"], "--bundle-ref does not apply to a run"),
    (["--pack", "01", "--wheelhouse", "w"], "--wheelhouse does not apply to a run"),
    (["--list", "--docker"], "--docker does not apply to --list"),
    (["--pack", "01", "--bisect-jobs", "2"], "--bisect-jobs does not apply to a run"),
    ([], "say what to do"),
    (["--check"], "say what to do"),
])
def test_options_that_do_not_fit_the_mode_are_refused(collection, upstream, argv, message, capsys):
    collection.add_pack("01", "toy", upstream.base)
    assert cli.main(argv, layout=collection.layout) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.05)" in text and "(default: auto)" in text and "(default: linux-x86_64)" in text
