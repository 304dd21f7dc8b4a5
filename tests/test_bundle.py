"""Offline bundles: made with a toy wheel (no index needed), verified, and run from with no network."""

import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.offline import boot as offline_boot
from harness.offline import bundle
from harness.report import receipts


def toy_wheel(dest: Path, name: str = "toydep", version: str = "1.0") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name}/__init__.py", f"VERSION = '{version}'\n")
        zf.writestr(f"{name}-{version}.data/purelib/{name}_extra.py", "X = 1\n")
        zf.writestr(f"{name}/big_unused/blob.bin", "x" * 100)
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return wheel


@pytest.fixture
def fake_downloads(monkeypatch):
    def download(specs, dest, python, platforms, progress):
        for spec in specs:
            name, _, version = spec.partition("==")
            toy_wheel(dest, name.replace("-", "_"), version)

    monkeypatch.setattr(bundle, "download_wheels", download)
    monkeypatch.setattr(bundle, "runner_requirements", lambda: ["runnerdep==2.0"])


def test_unpack_wheels_lays_out_data_dirs_and_prunes(tmp_path):
    toy_wheel(tmp_path / "wheels")
    removed = bundle.unpack_wheels(tmp_path / "wheels", tmp_path / "site", ("toydep/big_unused",))
    assert (tmp_path / "site" / "toydep" / "__init__.py").is_file()
    assert (tmp_path / "site" / "toydep_extra.py").is_file(), "purelib data moves to the top"
    assert removed == ["toydep/big_unused"] and not (tmp_path / "site" / "toydep" / "big_unused").exists()


def test_bundle_then_offline_run(collection, upstream, cache, tmp_path, fake_downloads, monkeypatch, capsys):
    repro = (
        "import json, toydep, widget\n"
        "print('EVIDENCE ' + json.dumps({'value': widget.VALUE, 'toydep': toydep.VERSION}))\n"
        "print('FIX_VALIDATED' if widget.VALUE >= 2 else 'BUG_REPRODUCED')\n"
    )
    collection.add_pack("01", "toy", upstream.base, repro=repro,
                        extra_requires='wheels = ["toydep==1.5"]\nbundle_prune = ["toydep/big_unused"]')
    out = tmp_path / "bundle"
    assert cli.main(["--bundle", str(out), "--pack", "01", "--cache-dir", str(cache), "--python", "3.12"],
                    layout=collection.layout) == cli.EXIT_OK
    made = json.loads((out / "bundle.json").read_text())
    assert made["wheels"] == ["toydep==1.5"] and made["pruned"] == ["toydep/big_unused"]
    assert (out / "packs-site.tar.xz").is_file() and (out / "runner-site.tar.xz").is_file()
    assert not list(out.rglob(".git")), "bundled trees carry no .git"

    # the node: no network (the upstream URL leads nowhere), a fresh cache, only the bundle
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    args = ["--offline", str(out), "--pack", "01", "--cache-dir", str(tmp_path / "empty-cache"),
            "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    result = json.loads((tmp_path / "r.json").read_text())["packs"][0]
    assert result["verdict"] == "CONFIRMED"
    assert result["stages"][0]["evidence"] == {"value": 1, "toydep": "1.5"}
    assert result["bundle"]["wheels"] == ["toydep==1.5"]


def test_tampered_bundle_is_refused(collection, upstream, cache, tmp_path, fake_downloads, capsys):
    collection.add_pack("01", "toy", upstream.base)
    out = tmp_path / "bundle"
    cli.main(["--bundle", str(out), "--pack", "01", "--cache-dir", str(cache)], layout=collection.layout)
    archive = out / bundle.SOURCES
    archive.write_bytes(archive.read_bytes() + b"\0")  # a changed source cache
    assert cli.main(["--offline", str(out), "--pack", "01"], layout=collection.layout) == cli.EXIT_USAGE
    assert "changed since bundling" in capsys.readouterr().err


def test_boot_appends_runner_site_after_installed_packages(tmp_path, monkeypatch, fake_downloads):
    toy_wheel(tmp_path / "w", "runnerdep", "2.0")
    bundle.unpack_wheels(tmp_path / "w", tmp_path / "site", ())
    out = tmp_path / "b"
    out.mkdir()
    bundle.pack_tree(tmp_path / "site", out / bundle.RUNNER_SITE)
    (out / "bundle.json").write_text(json.dumps({"runner_site": bundle.RUNNER_SITE}))
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    monkeypatch.setattr("sys.path", ["first"])
    offline_boot.boot(["--offline", str(out)])
    import sys

    assert sys.path[0] == "first" and sys.path[-1].endswith("runner-site")
    assert (Path(sys.path[-1]) / "runnerdep" / "__init__.py").is_file()


def test_a_bundle_from_before_the_sources_archive_still_runs(collection, upstream, cache, tmp_path, fake_downloads,
                                                             monkeypatch):
    """Bundles made earlier carry the source cache as a plain cache/ folder (and GPU-side kernel caches are
    keyed to their unpack path): --offline still reads them."""
    collection.add_pack("01", "toy", upstream.base)
    out = tmp_path / "bundle"
    cli.main(["--bundle", str(out), "--pack", "01", "--cache-dir", str(cache)], layout=collection.layout)
    made = json.loads((out / "bundle.json").read_text())
    with tarfile.open(out / bundle.SOURCES) as tar:
        tar.extractall(out / "cache", filter="data")
    (out / bundle.SOURCES).unlink()
    del made["sources"], made["files"][bundle.SOURCES]
    made["files"].update({str(p.relative_to(out)): receipts.sha256_file(p)
                          for p in sorted((out / "cache").rglob("*")) if p.is_file()})
    (out / "bundle.json").write_text(json.dumps(made))
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    args = ["--offline", str(out), "--pack", "01", "--cache-dir", str(tmp_path / "empty"),
            "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    assert json.loads((tmp_path / "r.json").read_text())["packs"][0]["verdict"] == "CONFIRMED"
