"""Release sdists through the package index pip is configured with (PEP 691 JSON, PEP 503 HTML
as a fallback). The index is never hard-coded here: pip's own configuration decides it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import TypeVar

from packaging.utils import canonicalize_name, parse_sdist_filename
from packaging.version import Version

ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


T = TypeVar("T")


class PackageIndexError(Exception):
    """The index does not hold what the pack pins, or served something else."""


class IndexUnreachable(PackageIndexError):
    """No configured index answered at all."""


@dataclass(frozen=True)
class IndexConfig:
    index_urls: tuple[str, ...]
    cert: str | None


def _pip_config() -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {}
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _pip_default_index() -> str:
    try:
        from pip._internal.models.index import PyPI  # pip's own default, so no host is named here
    except ImportError as exc:  # pragma: no cover - pip is part of every venv we create
        raise PackageIndexError("pip is not importable, so the configured index is unknown; set PIP_INDEX_URL") from exc
    return PyPI.simple_url


@cache
def index_config() -> IndexConfig:
    cfg = _pip_config()

    def first(suffix: str) -> str | None:
        for scope in (":env:", "download", "install", "global", "user", "site"):
            if f"{scope}.{suffix}" in cfg:
                return cfg[f"{scope}.{suffix}"]
        return None

    main = os.environ.get("PIP_INDEX_URL") or first("index-url") or _pip_default_index()
    extra = (os.environ.get("PIP_EXTRA_INDEX_URL") or first("extra-index-url") or "").split()
    urls = tuple(u for u in (main, *extra) if u.startswith(("http://", "https://")))
    cert = os.environ.get("PIP_CERT") or first("cert")
    return IndexConfig(index_urls=urls, cert=cert)


def _open(url: str, accept: str | None = None, timeout: float = 60):
    cfg = index_config()
    ctx = ssl.create_default_context(cafile=cfg.cert) if cfg.cert else ssl.create_default_context()
    headers = {"User-Agent": "upstream-repro"}
    if accept:
        headers["Accept"] = accept
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout, context=ctx)


@dataclass(frozen=True)
class ReleaseFile:
    filename: str
    url: str
    sha256: str | None
    yanked: bool = False
    size: int | None = None  # bytes, where the index lists them (PEP 700)


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def _project_files(index_url: str, project: str) -> list[ReleaseFile]:
    base = index_url.rstrip("/") + "/" + canonicalize_name(project) + "/"
    with _open(base, ACCEPT) as resp:
        ctype = resp.headers.get("Content-Type", "")
        body = resp.read().decode("utf-8")
        final = resp.geturl()
    if "json" in ctype:
        data = json.loads(body)
        return [
            ReleaseFile(f["filename"], urllib.parse.urljoin(final, f["url"]), f.get("hashes", {}).get("sha256"),
                        bool(f.get("yanked")), f.get("size") if isinstance(f.get("size"), int) else None)
            for f in data.get("files", [])
        ]
    parser = _Anchors()
    parser.feed(body)
    files = []
    for text, href in parser.links:
        url = urllib.parse.urljoin(final, href)
        match = re.search(r"#sha256=([0-9a-f]{64})", url)
        files.append(ReleaseFile(text, url.split("#")[0], match.group(1) if match else None))
    return files


def project_files(name: str) -> list[ReleaseFile]:
    """Every file of project `name` the first configured index that knows it lists."""
    return _search(name, lambda files: files or None, name, f"no files of {name}")


def find_sdist(requirement: str) -> ReleaseFile:
    """'name==version' -> the release's sdist as the configured index lists it."""
    name, _, version = requirement.partition("==")
    return _search_sdists(name, lambda v: str(v) == version, requirement)[1]


def latest_sdist(name: str) -> tuple[str, ReleaseFile]:
    """The newest non-yanked final release of `name` that has an sdist, and that sdist."""
    version, found = _search_sdists(name, lambda v: not v.is_prerelease and not v.is_devrelease,
                                    f"{name} (newest)", newest=True)
    return str(version), found


def _search_sdists(name: str, accept: Callable[[Version], bool], what: str,
                   newest: bool = False) -> tuple[Version, ReleaseFile]:
    """(version, sdist) of the first accepted release the indexes list, or of the newest with `newest`."""
    def pick(files: list[ReleaseFile]) -> tuple[Version, ReleaseFile] | None:
        matches = []
        for f in files:
            if not f.filename.endswith((".tar.gz", ".zip")) or (newest and f.yanked):
                continue
            try:
                fname, fversion = parse_sdist_filename(f.filename)
            except ValueError:
                continue
            if fname == canonicalize_name(name) and accept(fversion):
                matches.append((fversion, f))
        if not matches:
            return None
        return max(matches, key=lambda m: m[0]) if newest else matches[0]

    return _search(name, pick, what, f"no sdist for {what}")


def find_file(name: str, filename: str) -> ReleaseFile:
    """This exact file of project `name` as the configured index lists it (with its sha256)."""
    return _search(name, lambda files: next((f for f in files if f.filename == filename), None),
                   filename, f"no file {filename}")


def _search(name: str, pick: Callable[[list[ReleaseFile]], T | None], what: str, none_found: str) -> T:
    """pick(files) on each configured index's listing of `name`, in order; the first answer that is not
    None. IndexUnreachable when no index answered at all, PackageIndexError otherwise."""
    cfg = index_config()
    if not cfg.index_urls:
        raise PackageIndexError("pip is configured with no http(s) index; cannot look up " + what)
    problems, answered = [], False
    for index_url in cfg.index_urls:
        try:
            files = _project_files(index_url, name)
        except urllib.error.HTTPError as exc:  # it answered: the project is not there
            answered = True
            problems.append(f"{index_url}: {exc}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problems.append(f"{index_url}: {exc}")
            continue
        answered = True
        found = pick(files)
        if found is not None:
            return found
        problems.append(f"{index_url}: {none_found}")
    raise (PackageIndexError if answered else IndexUnreachable)("; ".join(problems))


def download(release: ReleaseFile, dest: Path, expected_sha256: str) -> Path:
    """Download to dest/filename and verify the pinned sha256 (and the index's, if it gave one)."""
    if release.sha256 and release.sha256 != expected_sha256:
        raise PackageIndexError(
            f"{release.filename}: the index lists sha256 {release.sha256}, the pack pins {expected_sha256}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / release.filename
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with _open(release.url, timeout=300) as resp, open(partial, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise PackageIndexError(f"downloading {release.filename}: {exc}") from exc
    if digest.hexdigest() != expected_sha256:
        partial.unlink(missing_ok=True)
        raise PackageIndexError(
            f"{release.filename}: sha256 {digest.hexdigest()} does not match the pinned {expected_sha256}"
        )
    shutil.move(partial, target)
    return target
