import pytest

from harness.core import manifest
from harness.core.manifest import ManifestError


def test_valid_manifest_loads(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    pack = manifest.load_pack(folder, collection.layout)
    assert (pack.id, pack.slug, pack.repo, pack.base_commit) == ("07", "toy", "acme/widget", upstream.base)
    assert pack.git_url == "https://github.com/acme/widget"
    assert pack.patch_path == collection.layout.patches / "07-toy.patch"


def test_missing_field_names_file_and_field(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    text = (folder / "pack.toml").read_text().replace('package = "widget"\n', "")
    (folder / "pack.toml").write_text(text)
    with pytest.raises(ManifestError, match=r"pack\.toml: field 'target\.package'"):
        manifest.load_pack(folder, collection.layout)


def test_wrong_type_names_field(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base, gpu='"yes"')
    with pytest.raises(ManifestError, match=r"field 'requires\.gpu'"):
        manifest.load_pack(folder, collection.layout)


def test_unknown_field_is_refused(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base, extra_top='colour = "blue"')
    with pytest.raises(ManifestError, match=r"field 'colour'"):
        manifest.load_pack(folder, collection.layout)


def test_short_commit_is_refused(collection):
    folder = collection.add_pack("07", "toy", "abc1234")
    with pytest.raises(ManifestError, match=r"field 'base\.commit'"):
        manifest.load_pack(folder, collection.layout)


def test_sdist_needs_its_sha256(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base, sdist='sdist = "widget==1.0"')
    with pytest.raises(ManifestError, match="sdist_sha256"):
        manifest.load_pack(folder, collection.layout)


def test_id_must_match_folder(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    folder.rename(folder.with_name("08-toy"))
    with pytest.raises(ManifestError, match="must match the folder name"):
        manifest.load_pack(folder.with_name("08-toy"), collection.layout)


def test_import_path_outside_checkout_refused(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    text = (folder / "pack.toml").read_text().replace('paths = ["src"]', 'paths = ["src/../.."]')
    (folder / "pack.toml").write_text(text)
    with pytest.raises(ManifestError, match="leaves the checkout"):
        manifest.load_pack(folder, collection.layout)


def test_bad_toml_is_a_clear_error(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    (folder / "pack.toml").write_text("id = \n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        manifest.load_pack(folder, collection.layout)


@pytest.mark.parametrize("selector", ["../etc", "07/../../x", "/tmp", "07-toy/..", "..", "07-Toy", "7a", ""])
def test_path_traversal_selectors_refused(collection, upstream, selector):
    collection.add_pack("07", "toy", upstream.base)
    with pytest.raises(ManifestError, match="not a pack id"):
        manifest.select([selector], collection.layout)


def test_select_by_number_and_name(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    assert manifest.select(["7"], collection.layout) == [folder]
    assert manifest.select(["07", "07-toy"], collection.layout) == [folder]
    with pytest.raises(ManifestError, match="no pack '08'"):
        manifest.select(["08"], collection.layout)
