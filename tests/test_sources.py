import hashlib
import io
import json
import stat
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.sources import upstream as sources
from harness.sources.extract import UnsafeArchiveError, extract_archive

from .conftest import sh


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def noop(_msg: str) -> None:
    pass


def test_git_fetch_at_pinned_commit(upstream, cache):
    src = sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", (), cache, noop)
    assert src.kind == "git" and src.commit == upstream.base and not src.from_cache
    assert "VALUE = 1" in (src.tree / "src" / "widget" / "__init__.py").read_text()
    assert sh("git", "rev-parse", "HEAD", cwd=src.tree) == upstream.base


def test_git_fetch_falls_back_when_server_refuses_single_commits(upstream, cache, monkeypatch):
    # protocol v0 without allow*SHA1InWant refuses a bare commit id, as some servers do
    sh("git", "config", "uploadpack.allowAnySHA1InWant", "false", cwd=upstream.path)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    monkeypatch.setenv("GIT_CONFIG_KEY_1", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_1", "0")
    messages = []
    src = sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", (), cache, messages.append)
    assert src.commit == upstream.base
    assert any("fetching its whole history" in m for m in messages)


def test_sparse_paths(upstream, cache):
    src = sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", ("src",), cache, noop)
    assert (src.tree / "src" / "widget" / "__init__.py").is_file()
    assert not (src.tree / "docs.txt").exists()


def test_missing_sparse_path_is_an_error(upstream, cache):
    with pytest.raises(sources.SourceError, match="does not exist at that commit"):
        sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", ("nope",), cache, noop)


def test_pristine_cache_is_reused_and_never_modified(upstream, cache, tmp_path):
    first = sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", (), cache, noop)
    before = tree_digest(first.tree)
    work = sources.work_copy(first, tmp_path / "work")
    (work / "src" / "widget" / "__init__.py").write_text("VALUE = 99\n")
    (work / "new_file.py").write_text("x = 1\n")
    again = sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", (), cache, noop)
    assert again.from_cache and again.tree == first.tree
    assert tree_digest(first.tree) == before
    # the pristine files are read-only, so a stray write by a user fails instead of corrupting the cache
    mode = (first.tree / "src" / "widget" / "__init__.py").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_work_copy_is_its_own_git_repo(upstream, cache, tmp_path):
    src = sources.acquire_git("acme/widget", "v1.0", upstream.base, "pinned", (), cache, noop)
    work = sources.work_copy(src, tmp_path / "w")
    assert sh("git", "status", "--porcelain", cwd=work) == ""
    assert sh("git", "rev-parse", "--show-toplevel", cwd=work) == str(work)


def test_resolve_ref_tag_branch_and_offline_cache(upstream, cache, monkeypatch):
    assert sources.resolve_ref("acme/widget", "v1.0", cache, noop) == (upstream.base, "ls-remote")
    assert sources.resolve_ref("acme/widget", "main", cache, noop)[0] == upstream.fixed
    assert sources.resolve_ref("acme/widget", upstream.base, cache, noop) == (upstream.base, "pinned")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")  # the mirror is gone
    commit, how = sources.resolve_ref("acme/widget", "v1.0", cache, noop)
    assert commit == upstream.base and how.startswith("cache (resolved")
    with pytest.raises(sources.SourceError, match="no ref 'v9'|cannot resolve"):
        sources.resolve_ref("acme/widget", "v9", cache, noop)


def test_unknown_ref_is_a_clear_error(upstream, cache):
    with pytest.raises(sources.SourceError, match="has no ref 'nope'"):
        sources.resolve_ref("acme/widget", "nope", cache, noop)


# ------------------------------------------------------------------ sdist


def make_sdist(path: Path, members: dict[str, bytes], top: str = "widget-1.0") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PEP 691 index on loopback serving widget-1.0.tar.gz; pip is pointed at it by PIP_INDEX_URL."""
    root = tmp_path / "index"
    (root / "simple" / "widget").mkdir(parents=True)
    (root / "files").mkdir()
    data = make_sdist(root / "files" / "widget-1.0.tar.gz",
                      {"src/widget/__init__.py": b"VALUE = 1  # the bug\nOTHER = 'a'\n", "PKG-INFO": b"x"})
    sha = hashlib.sha256(data).hexdigest()
    page = {"meta": {"api-version": "1.1"}, "name": "widget", "files": [
        {"filename": "widget-1.0.tar.gz", "url": "../../files/widget-1.0.tar.gz", "hashes": {"sha256": sha}}]}
    (root / "simple" / "widget" / "index.html").write_text(json.dumps(page))

    class Handler(SimpleHTTPRequestHandler):
        def guess_type(self, path):
            return "application/vnd.pypi.simple.v1+json" if path.endswith("index.html") else "application/gzip"

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    yield sha
    server.shutdown()


def test_sdist_download_verify_extract(index, cache):
    src = sources.acquire_sdist("acme/widget", "v1.0", "widget==1.0", index, cache, noop)
    assert src.kind == "sdist" and src.commit is None
    assert (src.tree / "src" / "widget" / "__init__.py").read_text().startswith("VALUE = 1")
    assert (cache / "sdist" / index / "archive" / "widget-1.0.tar.gz").is_file()
    again = sources.acquire_sdist("acme/widget", "v1.0", "widget==1.0", index, cache, noop)
    assert again.from_cache


def test_sdist_sha256_mismatch_is_refused(index, cache):
    with pytest.raises(sources.SourceError, match="sha256"):
        sources.acquire_sdist("acme/widget", "v1.0", "widget==1.0", "0" * 64, cache, noop)
    assert not (cache / "sdist" / ("0" * 64)).exists()


def test_sdist_missing_version(index, cache):
    with pytest.raises(sources.SourceError, match="no sdist for widget==2.0"):
        sources.acquire_sdist("acme/widget", "v1.0", "widget==2.0", index, cache, noop)


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "widget-1.0/../../evil.py"])
def test_traversal_members_refused(tmp_path, name):
    archive = tmp_path / "w.tar.gz"
    make_sdist(archive, {"ok.py": b"", name: b"x"}, top="")
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "out", strip_top=False)
    assert not (tmp_path / "evil.py").exists()


def test_link_members_refused(tmp_path):
    archive = tmp_path / "w.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("widget-1.0/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(archive, tmp_path / "out")


def test_extraction_strips_the_top_folder(tmp_path):
    archive = tmp_path / "w.tar.gz"
    make_sdist(archive, {"a/b.py": b"1"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.py").read_text() == "1"


def test_extraction_keeps_modification_times(tmp_path):
    """tilelang's kernel cache key holds its library's mtime: the same bundle must unpack the same way."""
    archive = tmp_path / "w.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        info = tarfile.TarInfo("lib/libx.so")
        info.size, info.mtime = 3, 1_700_000_000
        tar.addfile(info, io.BytesIO(b"abc"))
    for n in (1, 2):
        extract_archive(archive, tmp_path / f"out{n}", strip_top=False)
        assert (tmp_path / f"out{n}" / "lib" / "libx.so").stat().st_mtime == 1_700_000_000


def test_unreachable_index_is_told_apart(cache, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    with pytest.raises(sources.SourceUnreachable):
        sources.acquire_sdist("acme/widget", "v1.0", "widget==1.0", "0" * 64, cache, noop)


def test_latest_release_skips_yanked_and_prereleases(monkeypatch):
    from harness.sources import pkgindex

    files = [pkgindex.ReleaseFile(name, f"http://x/{name}", "a" * 64, yanked)
             for name, yanked in (("widget-1.0.tar.gz", False), ("widget-1.2.tar.gz", False),
                                  ("widget-1.3.tar.gz", True), ("widget-2.0rc1.tar.gz", False),
                                  ("widget-1.9-py3-none-any.whl", False))]
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setattr(pkgindex, "_project_files", lambda index, name: files)
    version, release = pkgindex.latest_sdist("widget")
    assert version == "1.2" and release.filename == "widget-1.2.tar.gz"
    assert pkgindex.find_sdist("widget==1.0").filename == "widget-1.0.tar.gz"
