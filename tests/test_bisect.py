"""--bisect on the toy upstream: a history with the bug at the base, a fixing commit later, merges and
broken commits on the way; online from the cache's partial clone, and offline from a bundle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.bisection import search as bisection
from harness.bisection.search import NEW, OLD, SKIP, bounds, next_probe
from harness.cli import main as cli

from .conftest import git_commit, sh
from .test_companions import companion_line
from .test_contract import add_contract
from .test_sources import index  # noqa: F401 - the loopback package index serving widget-1.0.tar.gz

# The reproducer reads VALUE: < 2 is the bug, >= 2 the fix, None says INCONCLUSIVE.
REPRO = """\
import json, widget
v = widget.VALUE
print("EVIDENCE " + json.dumps({"value": v, "worst_ratio": 0.5 if v is None else float(v)}))
print("INCONCLUSIVE" if v is None else "FIX_VALIDATED" if v >= 2 else "BUG_REPRODUCED")
"""
STATES = {
    "bug": "VALUE = 1\nOTHER = 'a'\n",
    "fix": "VALUE = 2\nOTHER = 'a'\n",
    "broken": "raise ImportError('this commit does not build')\n",  # the reproducer exits 1: skipped
    "unsure": "VALUE = None\nOTHER = 'a'\n",  # the reproducer says INCONCLUSIVE: skipped
}


@pytest.fixture
def history(upstream):
    """history(steps) rewrites the toy upstream's main to base + steps and returns the first-parent
    chain (base first). A step is a state name, or ("merge", [steps]) for a side branch merged in."""

    def build(steps) -> list[str]:
        repo = upstream.path
        sh("git", "checkout", "-q", "-B", "main", upstream.base, cwd=repo)
        chain = [upstream.base]
        for n, step in enumerate(steps):
            if isinstance(step, tuple):
                sh("git", "checkout", "-q", "-b", f"side{n}", cwd=repo)
                for m, side in enumerate(step[1]):
                    _write(repo, side, f"side {n}.{m}")
                    git_commit(repo, f"side {n}.{m}: {side}")
                sh("git", "checkout", "-q", "main", cwd=repo)
                (repo / "notes.txt").write_text(f"main before merge {n}\n")
                git_commit(repo, f"main {n} while the side branch is open")
                chain.append(sh("git", "rev-parse", "HEAD", cwd=repo))
                sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q", "--no-ff", "-m",
                   f"Merge side{n}", f"side{n}", cwd=repo)
            else:
                _write(repo, step, f"step {n}")
                git_commit(repo, f"step {n}: {step}")
            chain.append(sh("git", "rev-parse", "HEAD", cwd=repo))
        return chain

    return build


def _write(repo: Path, state: str, note: str) -> None:
    (repo / "src" / "widget" / "__init__.py").write_text(STATES[state])
    (repo / "docs.txt").write_text(note + "\n")


def bisect_args(cache, tmp_path, *extra) -> list[str]:
    return ["--bisect", "01", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "runs"),
            "--json", str(tmp_path / "b.json"), *extra]


def record(tmp_path) -> dict:
    return json.loads((tmp_path / "b.json").read_text())


# ---------------------------------------------------------------- the search alone


def test_next_probe_halves_and_walks_around_skips():
    assert next_probe({0: OLD, 8: NEW}) == 4
    assert next_probe({0: OLD, 4: SKIP, 8: NEW}) == 3  # nearest the middle, lower on a tie
    assert next_probe({0: OLD, 3: SKIP, 4: SKIP, 5: SKIP, 8: NEW}) == 2
    assert next_probe({0: OLD, 1: NEW}) is None
    states = {0: OLD, 1: SKIP, 2: SKIP, 3: NEW}
    assert next_probe(states) is None and bounds(states) == (0, 3)


@pytest.mark.parametrize("first_new", range(1, 12))
def test_search_finds_every_position_in_log_steps(first_new):
    n = 12
    states = {0: OLD, n - 1: NEW}
    runs = 0
    while (p := next_probe(states)) is not None:
        states[p] = NEW if p >= first_new else OLD
        runs += 1
    assert bounds(states)[1] == first_new and runs <= 4


# ---------------------------------------------------------------- online, end to end


def test_finds_the_fixing_commit(collection, upstream, history, cache, tmp_path, capsys):
    chain = history(["bug", "bug", ("merge", ["bug", "bug"]), "bug", "fix", "fix", "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_OK
    out = capsys.readouterr().out
    rec = record(tmp_path)
    fix = chain[6]
    assert rec["status"] == "found" and rec["search"] == "fix"
    assert rec["found"]["sha"] == fix and rec["found"]["subject"] == "step 4: fix"
    assert rec["commits"] == len(chain) - 1 == 8, "first parents only: the side branch's commits are not steps"
    assert f"fixed by {fix}" in out and "step 4: fix" in out
    tested = {t["sha"]: t for t in rec["tested"]}
    assert tested[upstream.base]["sentinel"] == "BUG_REPRODUCED" and tested[chain[-1]]["sentinel"] == "FIX_VALIDATED"
    assert len(tested) <= 2 + 3, "log2 of the chain plus both ends"
    assert tested[fix]["headline"] == "worst_ratio=2"
    log = Path(rec["log_dir"]) / f"{fix}.log"
    assert log.is_file() and "FIX_VALIDATED" in log.read_text()
    assert Path(rec["log_dir"]).parent.name == "01-toy"
    assert not (tmp_path / "runs" / "01-toy" / "work").exists(), "work copies go unless --keep"


def test_a_fix_that_came_with_a_merge_names_the_merge(collection, upstream, history, cache, tmp_path, capsys):
    chain = history(["bug", ("merge", ["bug", "fix", "fix"]), "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_OK
    rec = record(tmp_path)
    assert rec["found"]["sha"] == chain[3] and rec["found"]["merge"] is True
    assert "a merge" in rec["reason"] and "Merge side1" in capsys.readouterr().out


def test_skipped_commits_make_the_answer_honest(collection, upstream, history, cache, tmp_path, capsys):
    chain = history(["bug", "bug", "broken", "unsure", "fix", "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_UNEXPECTED
    rec = record(tmp_path)
    assert rec["status"] == "ambiguous" and rec["found"] is None
    assert [c["sha"] for c in rec["candidates"]] == chain[3:6]
    states = {t["sha"]: (t["state"], t["sentinel"]) for t in rec["tested"]}
    assert states[chain[3]] == ("skip", None) and states[chain[4]] == ("skip", "INCONCLUSIVE")
    assert "exit code 1" in next(t["error"] for t in rec["tested"] if t["sha"] == chain[3])
    out = capsys.readouterr().out
    assert "one of these 3 commits" in out and all(c[:12] in out for c in chain[3:6])


def test_a_skip_next_to_a_clear_answer_does_not_blur_it(collection, upstream, history, cache, tmp_path):
    chain = history(["bug", "broken", "bug", "fix", "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_OK
    assert record(tmp_path)["found"]["sha"] == chain[4]


def test_regression_search_from_another_start(collection, upstream, history, cache, tmp_path):
    chain = history(["fix", "fix", "fix", "bug", "bug"])
    sh("git", "tag", "good", chain[1], cwd=upstream.path)
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path, "--bisect-from", "good"), layout=collection.layout) == cli.EXIT_OK
    rec = record(tmp_path)
    assert rec["search"] == "regression" and rec["found"]["sha"] == chain[4]
    assert rec["old"] == {"ref": "good", "commit": chain[1]} and rec["commits"] == 4


def test_ends_that_agree_stop_with_a_sentence(collection, upstream, history, cache, tmp_path, capsys):
    history(["bug", "bug", "bug"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_UNEXPECTED
    rec = record(tmp_path)
    assert rec["status"] == "stopped" and rec["search"] is None
    assert "both ends give BUG_REPRODUCED: the bug is still live there" in rec["reason"]
    assert len(rec["tested"]) == 2


def test_an_untrusted_end_stops_before_searching(collection, upstream, history, cache, tmp_path):
    history(["bug", "bug", "broken"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_UNEXPECTED
    rec = record(tmp_path)
    assert "no trusted sentinel (exit code 1" in rec["reason"] and len(rec["tested"]) == 2


def test_upstream_names_the_far_end(collection, upstream, history, cache, tmp_path):
    chain = history(["bug", "fix", "bug"])  # main regressed again; v-mid is where it was fixed
    sh("git", "tag", "v-mid", chain[2], cwd=upstream.path)
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path, "--upstream", "v-mid"), layout=collection.layout) == cli.EXIT_OK
    assert record(tmp_path)["found"]["sha"] == chain[2]


def test_history_is_blobless_and_trees_land_in_the_pristine_cache(collection, upstream, history, cache, tmp_path):
    history(["bug", "fix"])
    (upstream.path / "big.bin").write_bytes(b"x" * 100_000)  # outside [source].paths: never fetched
    git_commit(upstream.path, "a big file outside the source paths")
    collection.add_pack("01", "toy", upstream.base, repro=REPRO, source='[source]\npaths = ["src"]')
    assert cli.main(bisect_args(cache, tmp_path), layout=collection.layout) == cli.EXIT_OK
    git_dir = cache / "history" / "acme+widget.git"
    objects = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects",
                              "--batch-check"], capture_output=True, text=True, check=True).stdout
    assert "blob 100000" not in objects, "blobs outside [source].paths stay on the server"
    entries = list((cache / "git" / "acme+widget").glob("*-sparse-*/source.json"))
    assert entries and all(json.loads(e.read_text())["paths"] == ["src"] for e in entries)
    tree = entries[0].parent / "tree"
    assert (tree / "src" / "widget" / "__init__.py").is_file() and not (tree / "docs.txt").exists()


def test_bisect_is_a_command_of_its_own(collection, upstream, cache, tmp_path, capsys):
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main([*bisect_args(cache, tmp_path), "--check"], layout=collection.layout) == cli.EXIT_USAGE
    assert "--check does not apply to --bisect" in capsys.readouterr().err


def test_a_base_that_is_not_an_ancestor(collection, upstream, history, cache, tmp_path, capsys):
    history(["bug", "fix"])
    sh("git", "checkout", "-q", "--orphan", "other", cwd=upstream.path)
    other = git_commit(upstream.path, "unrelated root")
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    args = bisect_args(cache, tmp_path, "--upstream", other)
    assert cli.main(args, layout=collection.layout) == cli.EXIT_UNEXPECTED
    assert "is not an ancestor" in capsys.readouterr().err


# ---------------------------------------------------------------- offline, from a bundle


@pytest.fixture
def no_wheels(monkeypatch, tmp_path):
    """The toy packs name no stack (and the toy collection has no stacks/runner): a bundle carries no units."""
    monkeypatch.setenv("REPRO_ENV_DIR", str(tmp_path / "envs"))


def test_bundle_then_bisect_offline(collection, upstream, history, cache, tmp_path, no_wheels, monkeypatch, capsys):
    chain = history(["bug", "broken", ("merge", ["bug", "bug"]), "bug", "fix", "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO, source='[source]\npaths = ["src"]')
    out = tmp_path / "bundle"
    made = ["--bundle", str(out), "--pack", "01", "--bundle-bisect", "--cache-dir", str(cache)]
    assert cli.main(made, layout=collection.layout) == cli.EXIT_OK
    assert "history of the base and 7 first-parent commits" in capsys.readouterr().out
    hist = json.loads((out / "history" / "01-toy.json").read_text())
    assert [c["sha"] for c in hist["commits"]] == chain
    assert "history/01-toy.bundle" in json.loads((out / "bundle.json").read_text())["files"], "hashed"
    listing = subprocess.run(["git", "bundle", "list-heads", str(out / "history" / "01-toy.bundle")],
                             capture_output=True, text=True, check=True).stdout
    assert hist["commits"][-1]["compact"] in listing
    node = tmp_path / "node.git"
    sh("git", "init", "-q", "--bare", str(node), cwd=tmp_path)
    sh("git", "--git-dir", str(node), "fetch", "-q", str(out / "history" / "01-toy.bundle"), "+refs/*:refs/*",
       cwd=tmp_path)
    messages = sh("git", "--git-dir", str(node), "log", "--format=%B", hist["commits"][-1]["compact"], cwd=tmp_path)
    assert all(f"Upstream-Commit: {sha}" in messages for sha in chain), "each compact commit names its original"
    files = sh("git", "--git-dir", str(node), "ls-tree", "-r", "--name-only", hist["commits"][-1]["compact"],
               cwd=tmp_path)
    assert files.split() == ["src/widget/__init__.py"], "only [source].paths are carried"

    # the node: the upstream URL leads nowhere, the cache is empty
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    args = ["--offline", str(out), "--bisect", "01", "--cache-dir", str(tmp_path / "empty-cache"),
            "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "b.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    rec = record(tmp_path)
    assert rec["found"]["sha"] == chain[6] and rec["found"]["subject"] == "step 4: fix"
    assert rec["source"].startswith("offline bundle") and rec["commits"] == 7
    assert not (tmp_path / "empty-cache").exists()
    assert f"fixed by {chain[6]}" in capsys.readouterr().out

    # a sub-range of the bundled chain, named by sha prefix
    assert cli.main([*args, "--upstream", chain[5][:10]], layout=collection.layout) == cli.EXIT_UNEXPECTED
    assert "both ends give BUG_REPRODUCED" in record(tmp_path)["reason"]
    assert cli.main([*args, "--upstream", "f" * 12], layout=collection.layout) == cli.EXIT_UNEXPECTED
    assert "is not one of its commits" in capsys.readouterr().err


def test_offline_without_a_bundled_history_says_how_to_make_one(collection, upstream, cache, tmp_path, no_wheels,
                                                                 capsys):
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    out = tmp_path / "bundle"
    assert cli.main(["--bundle", str(out), "--pack", "01", "--cache-dir", str(cache)],
                    layout=collection.layout) == cli.EXIT_OK
    assert cli.main(["--offline", str(out), "--bisect", "01"], layout=collection.layout) == cli.EXIT_UNEXPECTED
    assert "--bundle-bisect" in capsys.readouterr().err


def test_result_record_serialises(collection, upstream, history, cache, tmp_path):
    history(["bug", "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    cli.main(bisect_args(cache, tmp_path), layout=collection.layout)
    rec = record(tmp_path)
    assert set(rec) >= {"pack", "repo", "old", "new", "search", "status", "found", "candidates", "tested", "commits"}
    assert (Path(rec["log_dir"]) / "bisect.json").is_file()
    assert bisection.EXIT_FOUND == cli.EXIT_OK


def test_output_keeps_brackets_in_subjects(capsys):
    from rich.console import Console

    result = bisection.BisectResult("01-toy", "acme/widget", [], {"ref": "v1.0", "commit": "a" * 40},
                                    {"ref": "main", "commit": "b" * 40}, "fix", "found", "why", 3,
                                    found={"sha": "b" * 40, "subject": "[ops] fix the [CI] thing",
                                           "date": "2026-01-01"})
    result.tested.append(bisection.Tested(3, "b" * 40, "[ops] fix the [CI] thing", "2026-01-01", False, NEW,
                                          "FIX_VALIDATED", {"x": 1}, "", None, 1.0, ""))
    bisection.print_result(result, Console(width=200))
    out = capsys.readouterr().out
    assert out.count("[ops] fix the [CI] thing") == 2



def test_a_contract_pack_bisects_broken_to_held():
    from types import SimpleNamespace

    assert bisection.sentinel_pair(SimpleNamespace(is_contract=True)) == ("CONTRACT_BROKEN", "CONTRACT_HELD")
    assert bisection.sentinel_pair(SimpleNamespace(is_contract=False)) == ("BUG_REPRODUCED", "FIX_VALIDATED")


# ---------------------------------------------------------------- side by side (--bisect-jobs)


@pytest.mark.parametrize("jobs", [2, 3, 7])
@pytest.mark.parametrize("first_new", range(1, 20))
def test_rounds_of_jobs_find_every_position(jobs, first_new):
    n = 20
    states = {0: OLD, n - 1: NEW}
    rounds = 0
    while probes := bisection.next_probes(states, jobs):
        assert len(probes) == len(set(probes)) <= jobs and all(p not in states for p in probes)
        for p in probes:
            states[p] = NEW if p >= first_new else OLD
        rounds += 1
    assert bounds(states)[1] == first_new
    assert rounds <= {2: 3, 3: 3, 7: 2}[jobs], "about log_(J+1) of the chain"


def test_one_job_is_the_plain_bisection():
    states = {0: OLD, 4: SKIP, 8: NEW}
    assert bisection.next_probes(states, 1) == [next_probe(states)] == [3]
    assert bisection.next_probes({0: OLD, 1: NEW}, 3) == []


def test_side_by_side_finds_the_fixing_commit(collection, upstream, history, cache, tmp_path, capsys):
    chain = history(["bug", "bug", "broken", "bug", "fix", "fix", "fix", "fix"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path, "--bisect-jobs", "3"), layout=collection.layout) == cli.EXIT_OK
    rec = record(tmp_path)
    assert rec["status"] == "found" and rec["found"]["sha"] == chain[5] and rec["jobs"] == 3
    tested = {t["sha"]: t["state"] for t in rec["tested"]}
    assert tested[upstream.base] == "old" and tested[chain[-1]] == "new"
    assert [t["position"] for t in rec["tested"]] == sorted(t["position"] for t in rec["tested"])
    assert len(tested) <= 2 + 6, "two rounds of three at most"


def test_side_by_side_ends_that_agree_still_stop(collection, upstream, history, cache, tmp_path):
    history(["bug", "bug", "bug"])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(bisect_args(cache, tmp_path, "--bisect-jobs", "2"), layout=collection.layout) == 1
    rec = record(tmp_path)
    assert rec["status"] == "stopped" and "both ends give BUG_REPRODUCED" in rec["reason"]


def test_bisect_jobs_refuses_timed_packs_and_lone_use(collection, upstream, cache, tmp_path, capsys):
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(["--bisect-jobs", "2", "--list"], layout=collection.layout) == cli.EXIT_USAGE
    assert "--bisect-jobs does not apply to --list (it goes with --bisect)" in capsys.readouterr().err
    assert cli.main(bisect_args(cache, tmp_path, "--bisect-jobs", "0"), layout=collection.layout) == cli.EXIT_USAGE
    add_contract(collection, upstream.base, pack_id="02", kind="perf")
    args = ["--bisect", "02", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r2"), "--bisect-jobs", "2"]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_USAGE
    assert "verdict is a timing" in capsys.readouterr().err


REPRO_WITH_COMPANION = """\
import json, widget
import src.widget as companion
v = widget.VALUE
print("EVIDENCE " + json.dumps({"value": v, "companion_value": companion.VALUE}))
print("FIX_VALIDATED" if v >= 2 else "BUG_REPRODUCED")
"""


def test_bundled_history_from_another_start_and_a_companion_from_the_bundle(  # noqa: PLR0913
        collection, upstream, history, cache, tmp_path, no_wheels, monkeypatch, capsys, index):  # noqa: F811
    """A base on a release branch is no ancestor of main, so --bundle-bisect takes --bisect-from (a main
    commit) as the history's start; on the node the pack's companion comes from the bundle, not the index."""
    chain = history(["bug", "bug", "bug", "fix"])
    sh("git", "tag", "fork", chain[1], cwd=upstream.path)
    collection.add_pack("01", "toy", upstream.base, repro=REPRO_WITH_COMPANION, source='[source]\npaths = ["src"]',
                        extra_requires=companion_line(index))
    out = tmp_path / "bundle"
    made = ["--bundle", str(out), "--pack", "01", "--bundle-bisect", "--bisect-from", "fork", "--cache-dir", str(cache)]
    assert cli.main(made, layout=collection.layout) == cli.EXIT_OK
    assert "history of --bisect-from fork and 3 first-parent commits" in capsys.readouterr().out
    index_file = json.loads((out / "history" / "01-toy.json").read_text())
    assert index_file["old"] == {"ref": "fork", "commit": chain[1]}
    assert [c["sha"] for c in index_file["commits"]] == chain[1:]

    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the node reaches no index
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    args = ["--offline", str(out), "--bisect", "01", "--cache-dir", str(tmp_path / "empty-cache"),
            "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "b.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK, capsys.readouterr().err
    rec = record(tmp_path)
    assert rec["old"] == {"ref": "fork", "commit": chain[1]} and rec["found"]["sha"] == chain[4]
    assert all(t["evidence"]["companion_value"] == 1 for t in rec["tested"])


def test_bisect_from_goes_with_bisect_or_bundle_bisect_only(collection, upstream, capsys):
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    assert cli.main(["--pack", "01", "--bisect-from", "v1"], layout=collection.layout) == cli.EXIT_USAGE
    assert "--bisect-from does not apply to a run (it goes with --bisect, --bundle)" in capsys.readouterr().err
