"""Upstream history for --bisect: the first-parent chain between two commits, and each commit's tree
trimmed to the pack's [source].paths.

Online: one bare partial clone per target repo in the cache (`history/OWNER+NAME.git`, remote
https://github.com/OWNER/NAME, reached through git's own url.insteadOf like every other fetch) holds
the commits and trees reachable from the far end, no blobs (`--filter=blob:none`: Liger-Kernel's whole
history is 2 MB that way, Megatron-LM's 15 MB). A tested commit's blobs under [source].paths are then
fetched in one batch and its tree lands in the pristine cache under the key a normal run uses
(sources.git_entry), so `--pack NN --upstream SHA` afterwards sees the very same files.

Offline (`--bundle DIR --bundle-bisect`): the chain is rewritten into a compact history, one commit per
first-parent commit holding only [source].paths, with the original sha, subject and dates in its
message, packed as one `git bundle` file (history/<pack>.bundle) next to a JSON index
(history/<pack>.json) that maps each original sha to its compact commit. On the node the bisect reads
its trees from there, with the same code that reads them online.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.manifest import Pack
from ..sources import gitutil
from ..sources import upstream as sources
from ..sources.gitutil import GitError

Progress = Callable[[str], None]
HISTORY_DIR = "history"  # in a bundle: <pack>.bundle and <pack>.json
_FETCH_BATCH = 2000  # object ids per `git fetch` command line
_LOG_FORMAT = "%H%x1f%P%x1f%aI%x1f%s"


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    date: str  # author date, ISO 8601
    merge: bool = False  # a merge on the first-parent chain: the change came with one of the merged commits

    def record(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.sha[:12]} {self.date[:10]} {self.subject}"


def _parse_log(out: str) -> list[Commit]:
    commits = []
    for row in out.splitlines():
        if row.count("\x1f") < 3:
            continue
        sha, parents, date, subject = row.split("\x1f", 3)
        commits.append(Commit(sha, subject, date, merge=len(parents.split()) > 1))
    return commits


class History:
    """A target repo's commits and trees in a bare git directory: the online partial clone (origin
    set, missing blobs fetched on demand) or a compact history unpacked from a bundle (complete).

    `objects` maps an original upstream sha to the commit that holds its trimmed tree here (the compact
    history's own commit offline; online the sha itself)."""

    def __init__(self, git_dir: Path, repo: str, paths: tuple[str, ...], online: bool,
                 objects: dict[str, str] | None = None):
        self.git_dir, self.repo, self.paths, self.online = git_dir, repo, paths, online
        self.objects = objects or {}

    def git(self, args: list[str], **kw) -> str:
        return gitutil.git(["--git-dir", str(self.git_dir), *args], **kw)

    # ------------------------------------------------------------ the chain

    def chain(self, old: str, new: str) -> list[Commit]:
        """old, then every commit on new's first-parent chain that descends from old, oldest first.

        First parents only: those are the states upstream's main branch was really in (a merge is
        one step); commits inside merged branches may predate changes the mainline already had."""
        done = gitutil.run(["--git-dir", str(self.git_dir), "merge-base", "--is-ancestor", old, new],
                           cwd=self.git_dir)
        if done.returncode == 1:
            raise sources.SourceError(
                f"{self.repo}: {old[:12]} is not an ancestor of {new[:12]}, so there is no history between them "
                "to bisect")
        if done.returncode != 0:
            raise sources.SourceError(f"{self.repo}: git merge-base {old[:12]} {new[:12]}: {done.stderr.strip()}")
        descends = set(self.git(["rev-list", "--ancestry-path", f"{old}..{new}"], timeout=600).split())
        mainline = _parse_log(self.git(["log", "--first-parent", f"--format={_LOG_FORMAT}", new, f"^{old}"],
                                       timeout=600))
        first = _parse_log(self.git(["log", "-1", f"--format={_LOG_FORMAT}", old]))
        return first + [c for c in reversed(mainline) if c.sha in descends]

    # ------------------------------------------------------------ trimmed trees

    def trimmed_tree(self, sha: str, index: Path) -> str:
        """The tree of sha holding only [source].paths (all of it without paths), written to this
        repo (its blobs may still be missing online). A path missing at sha is a SourceError."""
        target = self.objects.get(sha, sha)
        entries = self.git(["ls-tree", "-r", "-z", "--full-tree", target, "--", *self.paths], timeout=600)
        names = [e.split("\t", 1)[1] for e in entries.split("\0") if "\t" in e]
        for p in self.paths:
            if not any(n == p or n.startswith(p.rstrip("/") + "/") for n in names):
                raise sources.SourceError(f"{self.repo}@{sha[:12]}: source path '{p}' does not exist at that commit")
        env = {"GIT_INDEX_FILE": str(index)}
        index.unlink(missing_ok=True)
        self.git(["update-index", "-z", "--index-info"], env=env, input=entries)
        return self.git(["write-tree", "--missing-ok"], env=env).strip()

    def fetch_missing(self, trees: list[str], progress: Progress) -> None:
        """Fetch the blobs these trees need in batches (one round trip each), not one by one."""
        if not trees:
            return
        listed = self.git(["rev-list", "--objects", "--missing=print", *trees], timeout=1800)
        missing = sorted({line[1:] for line in listed.splitlines() if line.startswith("?")})
        if not missing:
            return
        if not self.online:
            raise sources.SourceError(f"{self.git_dir}: {len(missing)} objects missing from the bundled history")
        progress(f"fetching {len(missing)} blobs under {', '.join(self.paths) or 'the whole tree'}")
        for i in range(0, len(missing), _FETCH_BATCH):
            try:
                self.git(["-c", "fetch.negotiationAlgorithm=noop", "fetch", "-q", "--no-tags", "--no-write-fetch-head",
                          "--recurse-submodules=no", "--filter=blob:none", "origin", *missing[i:i + _FETCH_BATCH]],
                         timeout=1800)
            except GitError as exc:
                raise sources.from_git_error(exc, f"fetching blobs of {self.repo}") from exc

    def checkout(self, sha: str, dest: Path, progress: Progress) -> None:
        """Write sha's trimmed tree into dest (a new folder)."""
        with tempfile.TemporaryDirectory(prefix="history-index-") as tmp:
            index = Path(tmp) / "index"
            tree = self.trimmed_tree(sha, index)
            self.fetch_missing([tree], progress)
            dest.mkdir(parents=True)
            self.git(["--work-tree", str(dest), "checkout-index", "-a", "-f"], env={"GIT_INDEX_FILE": str(index)},
                     timeout=1800)

    def source(self, commit: Commit, cache: Path, progress: Progress) -> sources.Source:
        """A pristine tree of commit in the cache (the entry a normal run at that commit uses)."""
        final = sources.git_entry(cache, self.repo, commit.sha, self.paths)
        ref = f"bisect {commit.sha[:12]}"
        if sources.cached(final, f"{self.repo}@{commit.sha[:12]}", progress):
            return sources.Source("git", self.repo, ref, commit.sha, final / "tree", "bisect", from_cache=True)
        staging = sources.staging_dir(cache)  # the cache's own staging and atomic move, as sources.acquire_git
        try:
            self.checkout(commit.sha, staging / "tree", progress)
        except GitError as exc:
            sources.remove_tree(staging)
            raise sources.from_git_error(exc, f"{self.repo}@{commit.sha[:12]}: writing its tree") from exc
        except BaseException:
            sources.remove_tree(staging)
            raise
        meta = {"kind": "git", "repo": self.repo, "ref": ref, "commit": commit.sha, "paths": list(self.paths),
                "url": f"https://github.com/{self.repo}", "via": f"bisect history {self.git_dir}",
                "fetched_at": sources.stamp()}
        sources.finish_entry(staging, final, meta)
        return sources.Source("git", self.repo, ref, commit.sha, final / "tree", "bisect")

    # ------------------------------------------------------------ compact history for bundles

    def write_compact(self, chain: list[Commit], bundle_file: Path, progress: Progress) -> dict[str, str]:
        """Rewrite chain into one commit per step holding only the trimmed trees; write it as a git
        bundle. Returns {original sha: compact commit}."""
        with tempfile.TemporaryDirectory(prefix="history-index-") as tmp:
            trees = [self.trimmed_tree(c.sha, Path(tmp) / "index") for c in chain]
        self.fetch_missing(sorted(set(trees)), progress)
        mapping: dict[str, str] = {}
        parent: list[str] = []
        for commit, tree in zip(chain, trees, strict=True):
            fields = self.git(["log", "-1", "--format=%an%x1f%ae%x1f%aI%x1f%cn%x1f%ce%x1f%cI", commit.sha]).strip()
            an, ae, ad, cn, ce, cd = fields.split("\x1f")
            env = {"GIT_AUTHOR_NAME": an, "GIT_AUTHOR_EMAIL": ae, "GIT_AUTHOR_DATE": ad,
                   "GIT_COMMITTER_NAME": cn, "GIT_COMMITTER_EMAIL": ce, "GIT_COMMITTER_DATE": cd}
            message = (f"{commit.subject}\n\nUpstream-Commit: {commit.sha}\nUpstream-Date: {commit.date}\n"
                       f"Upstream-Merge: {'yes' if commit.merge else 'no'}\n"
                       f"Trimmed-To: {', '.join(self.paths) or '(whole tree)'}\n")
            new = self.git(["commit-tree", tree, *parent, "-m", message], env=env).strip()
            mapping[commit.sha] = new
            parent = ["-p", new]
        ref = f"refs/compact/{chain[-1].sha}-{sources.paths_key(self.paths).lstrip('-') or 'all'}"
        self.git(["update-ref", ref, parent[-1]])
        bundle_file.parent.mkdir(parents=True, exist_ok=True)
        self.git(["bundle", "create", str(bundle_file), ref], timeout=1800)
        self.git(["update-ref", "-d", ref])
        return mapping


# ---------------------------------------------------------------- online


def history_dir(cache: Path, repo: str) -> Path:
    return cache / "history" / (repo.replace("/", "+") + ".git")


def online(repo: str, paths: tuple[str, ...], commits: list[str], cache: Path, progress: Progress) -> History:
    """The repo's history in the cache, holding (at least) these commits and their ancestors."""
    try:
        return _online(repo, paths, commits, cache, progress)
    except GitError as exc:
        raise sources.from_git_error(exc, f"the history of {repo}") from exc


def _online(repo: str, paths: tuple[str, ...], commits: list[str], cache: Path, progress: Progress) -> History:
    git_dir = history_dir(cache, repo)
    url = f"https://github.com/{repo}"
    if not (git_dir / "HEAD").is_file():
        git_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=git_dir.name + ".", dir=git_dir.parent))
        gitutil.git(["init", "-q", "--bare", str(tmp)])
        gitutil.git(["--git-dir", str(tmp), "remote", "add", "origin", url])
        try:
            os.rename(tmp, git_dir)
        except OSError:
            sources.remove_tree(tmp)  # another run made it first
    history = History(git_dir, repo, paths, online=True)
    known = set(history.git(["rev-list", "--all"], timeout=600).split())
    missing = [c for c in dict.fromkeys(commits) if c not in known]
    if missing:
        progress(f"fetching the history of {repo} up to {', '.join(c[:12] for c in missing)} "
                 "(commits and trees, no file contents)")
        try:
            history.git(["fetch", "-q", "--no-tags", "--filter=blob:none", "origin",
                         *(f"+{c}:refs/tips/{c}" for c in missing)], timeout=1800)
        except GitError as exc:
            if sources.is_unreachable(exc):
                raise sources.from_git_error(exc, f"fetching the history of {repo}") from exc
            progress(f"{url} refused fetching single commits ({exc.stderr[:120]}); fetching its branches and tags")
            try:
                history.git(["fetch", "-q", "--tags", "--filter=blob:none", "origin",
                             "+refs/heads/*:refs/remotes/origin/*"], timeout=3600)
            except GitError as exc2:
                raise sources.from_git_error(exc2, f"fetching the history of {repo}") from exc2
        known = set(history.git(["rev-list", "--all"], timeout=600).split())
        still = [c for c in missing if c not in known]
        if still:
            raise sources.SourceError(f"{repo}: commit(s) {', '.join(c[:12] for c in still)} not found upstream")
    return history


# ---------------------------------------------------------------- bundles


def bundle_history(pack: Pack, dest: Path, far_ref: str, cache: Path, progress: Progress,
                   old_ref: str | None = None) -> dict:
    """Write history/<pack>.bundle and history/<pack>.json into the bundle folder dest: the compact
    first-parent history from the pack's base (or old_ref: a base on a release branch is no ancestor of
    main, so its bisect starts where that branch left main) to far_ref. Returns the index (also written)."""
    far, how = sources.resolve_ref(pack.repo, far_ref, cache, progress)
    old = sources.resolve_ref(pack.repo, old_ref, cache, progress)[0] if old_ref else pack.base_commit
    history = online(pack.repo, pack.source_paths, [old, far], cache, progress)
    try:
        return _write_bundle_history(pack, history, dest, {"ref": old_ref or pack.base_ref, "commit": old},
                                     far_ref, far, how, progress)
    except GitError as exc:
        raise sources.from_git_error(exc, f"{pack.name}: the bundled history") from exc


def _write_bundle_history(pack: Pack, history: History, dest: Path, old: dict[str, str], far_ref: str, far: str,
                          how: str, progress: Progress) -> dict:
    chain = history.chain(old["commit"], far)
    progress(f"{pack.name}: carrying {len(chain)} first-parent commits {chain[0].sha[:12]}..{far[:12]} "
             f"trimmed to {', '.join(pack.source_paths) or 'the whole tree'}")
    folder = dest / HISTORY_DIR
    bundle_file = folder / f"{pack.name}.bundle"
    mapping = history.write_compact(chain, bundle_file, progress)
    index = {
        "pack": pack.name, "repo": pack.repo, "paths": list(pack.source_paths),
        "old": old,
        "new": {"ref": far_ref, "commit": far, "resolution": how},
        "bundle": bundle_file.name, "bundle_bytes": bundle_file.stat().st_size,
        "commits": [{**c.record(), "compact": mapping[c.sha]} for c in chain],
        "created_at": sources.stamp(),
    }
    (folder / f"{pack.name}.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def read_bundle_index(bundle: Path, pack: Pack) -> dict:
    path = bundle / HISTORY_DIR / f"{pack.name}.json"
    if not path.is_file():
        raise sources.SourceError(
            f"the bundle {bundle} carries no history for {pack.name}; make one with "
            f"`python runner.py --bundle DIR --pack {pack.id} --bundle-bisect` where the network is")
    return json.loads(path.read_text())


def from_bundle(bundle: Path, index: dict, unpack_to: Path) -> History:
    """Unpack the bundled compact history once (under unpack_to) and open it."""
    git_dir = unpack_to / f"{index['pack']}.git"
    done = git_dir.with_name(git_dir.name + ".done")
    if not done.is_file():
        if git_dir.exists():
            sources.remove_tree(git_dir)
        git_dir.parent.mkdir(parents=True, exist_ok=True)
        gitutil.git(["init", "-q", "--bare", str(git_dir)])
        gitutil.git(["--git-dir", str(git_dir), "fetch", "-q", str(bundle / HISTORY_DIR / index["bundle"]),
                     "+refs/*:refs/*"], timeout=600)
        done.write_text("ok\n")
    objects = {c["sha"]: c["compact"] for c in index["commits"]}
    return History(git_dir, index["repo"], tuple(index["paths"]), online=False, objects=objects)


def bundled_chain(index: dict) -> list[Commit]:
    return [Commit(c["sha"], c["subject"], c["date"], c.get("merge", False)) for c in index["commits"]]
