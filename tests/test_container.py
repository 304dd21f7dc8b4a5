"""--docker without a Docker engine: the build and run requests as data, and the whole flow through a
fake SDK (build or reuse, run with the GPU, relay the output, the runner's exit code, clear errors)."""

from __future__ import annotations

import re
import shutil
import sys
from types import ModuleType, SimpleNamespace

import pytest

from harness.cli import main as cli
from harness.container import docker as container
from harness.core import manifest
from harness.core.layout import Layout
from harness.envs import locks

LAYOUT = Layout()
ROOT = LAYOUT.root.resolve()


def _args(*argv: str):
    parser = cli.build_parser()
    return parser.parse_args(list(argv)), parser


def _plan(*argv: str, layout: Layout = LAYOUT, **kw):
    args, parser = _args(*argv)
    packs = [manifest.load_pack(f, layout) for f in manifest.select(args.pack, layout)]
    return container.plan(packs, args, parser, layout, env=kw.pop("env", {}), uid_gid=(1000, 1000), **kw)


def _mounts(plan):
    return {m["target"]: (m["source"], m["read_only"]) for m in plan.run["mounts"]}


def test_build_request_names_the_stacks_and_a_content_tag(tmp_path):
    p = _plan("--pack", "05", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"))
    assert p.stacks == ["mamba"] and p.needs_gpu
    assert re.fullmatch(str(tmp_path / "c" / "docker") + r"/context-[0-9a-f]{16}", p.build["path"])
    assert re.fullmatch(r"upstream-repro/mamba:ctx-[0-9a-f]{16}", p.tag) and p.build["tag"] == p.tag
    assert p.build["buildargs"] == {"BASE_IMAGE": "python:3.12-slim-bookworm", "PYTHON": "3.12"}
    assert p.build["labels"]["org.upstream-repro.content-sha256"].startswith(p.tag.rsplit("-", 1)[1])
    assert any("pinned by tag only" in n for n in p.notes)  # docker/base.toml has no digest yet
    both = _plan("--pack", "13", "--pack", "18", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"))
    assert both.stacks == ["tilelang-0.1.12", "tilelang-0.1.8", "torch"] and not both.needs_gpu
    assert both.run["device_requests"] == [] and any("gets none" in n for n in both.notes)


def test_run_request_same_command_gpu_and_mounts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _plan("--pack", "05", "--upstream", "main", "--cache-dir", str(tmp_path / "cache"),
              "--run-dir", "runs-here", "--json", "out/n.json", "--junit", str(ROOT / "n.xml"), "--receipt",
              "--interpreter", "/usr/bin/python3", "--docker", env={"CUDA_VISIBLE_DEVICES": "1", "SECRET": "x"})
    run = p.run
    assert run["image"] == p.tag and run["detach"] is True
    assert run["device_requests"] == [{"count": -1, "capabilities": [["gpu"]]}]
    assert run["working_dir"] == str(ROOT) and run["user"] == "1000:1000"
    # the same runner command, with the image's runner: --docker and the host's --interpreter stay outside
    assert run["command"] == [
        "/opt/repro/runner/bin/python", str(ROOT / "runner.py"), "--pack", "05", "--upstream", "main",
        "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "runs-here"),
        "--json", str(tmp_path / "out" / "n.json"), "--junit", str(ROOT / "n.xml"), "--receipt",
    ]
    assert any("--interpreter /usr/bin/python3 is a host Python" in n for n in p.notes)
    assert run["environment"]["CUDA_VISIBLE_DEVICES"] == "1" and "SECRET" not in run["environment"]
    assert run["environment"]["HOME"].startswith("/tmp/") and run["environment"]["REPRO_ENV_DIR"] == "/opt/repro/envs"
    # every host path at the same path inside: the collection read-only, what the runner writes writable
    assert _mounts(p) == {
        str(ROOT): (str(ROOT), True),
        str(tmp_path / "cache"): (str(tmp_path / "cache"), False),
        str(tmp_path / "runs-here"): (str(tmp_path / "runs-here"), False),
        str(tmp_path / "out"): (str(tmp_path / "out"), False),
        str(ROOT / "evidence"): (str(ROOT / "evidence"), False),  # --receipt
        str(ROOT / "n.xml"): (str(ROOT / "n.xml"), False),  # a file in the read-only collection
    }
    assert all(m["type"] == "bind" for m in run["mounts"])
    assert str(ROOT / "n.xml") in p.make_files and str(tmp_path / "out") in p.make_dirs


def test_default_run_dir_and_inputs(tmp_path):
    src = tmp_path / "checkout"
    src.mkdir()
    prev = tmp_path / "prev.json"
    prev.write_text("{}")
    p = _plan("--pack", "9", "--source", str(src), "--compare", str(prev), "--cache-dir", str(tmp_path / "c"),
              stamp="20260101-000000")
    assert p.stacks == ["torch"]
    run_dir = str(ROOT / "runs" / "20260101-000000")
    assert "--run-dir" in p.run["command"] and run_dir in p.run["command"]
    mounts = _mounts(p)
    assert mounts[run_dir] == (run_dir, False)  # writable, over the read-only collection
    assert mounts[str(src)] == (str(src), True) and mounts[str(prev)] == (str(prev), True)


def test_nested_paths_are_mounted_once(tmp_path):
    p = _plan("--pack", "05", "--cache-dir", str(tmp_path / "w" / "cache"), "--run-dir", str(tmp_path / "w"),
              "--json", str(tmp_path / "w" / "o.json"))
    targets = [m["target"] for m in p.run["mounts"]]
    assert targets == [str(ROOT), str(tmp_path / "w")]  # the cache and the output folder are inside the run folder


def test_system_folders_are_never_mount_targets(tmp_path):
    with pytest.raises(container.ContainerError, match=r"mounted over the image's own /usr/local/cache"):
        _plan("--pack", "05", "--cache-dir", "/usr/local/cache", "--run-dir", str(tmp_path / "r"))


def _copy_collection(tmp_path) -> Layout:
    root = tmp_path / "coll"
    for name in ("docker", "stacks", "harness", "packs"):
        shutil.copytree(ROOT / name, root / name)
    shutil.copy2(ROOT / "runner.py", root / "runner.py")
    return Layout(root)


def test_the_tag_follows_every_input(tmp_path, monkeypatch):
    layout = _copy_collection(tmp_path)
    pack = manifest.load_pack(layout.packs / "18-megatron-recipe-lowering", layout)
    first = container.build_request([pack], layout, tmp_path)["tag"]
    assert container.build_request([pack], layout, tmp_path)["tag"] == first  # reproducible
    lock = layout.root / "stacks" / "torch" / "lock-py3.12-linux-x86_64.txt"
    lock.write_text(lock.read_text() + "# touched\n")
    second = container.build_request([pack], layout, tmp_path)["tag"]
    assert second != first
    code = layout.root / "harness" / "run" / "pipeline.py"
    code.write_text(code.read_text() + "# touched\n")
    third = container.build_request([pack], layout, tmp_path)["tag"]
    assert third != second
    base = layout.root / "docker" / "base.toml"
    base.write_text(base.read_text().replace('digest = ""', 'digest = "sha256:' + "ab" * 32 + '"'))
    fourth = container.build_request([pack], layout, tmp_path)
    assert fourth["buildargs"]["BASE_IMAGE"] == "python:3.12-slim-bookworm@sha256:" + "ab" * 32
    assert fourth["tag"] != third
    monkeypatch.setenv("REPRO_DOCKER_BASE", "local/base:1")
    monkeypatch.setenv("REPRO_DOCKER_PYTHON", "3.11")
    fifth = container.build_request([pack], layout, tmp_path)
    assert fifth["buildargs"] == {"BASE_IMAGE": "local/base:1", "PYTHON": "3.11"}
    monkeypatch.setenv("REPRO_DOCKER_PYTHON", "2.7")
    with pytest.raises(container.ContainerError, match="REPRO_DOCKER_PYTHON"):
        container.build_request([pack], layout, tmp_path)
    monkeypatch.delenv("REPRO_DOCKER_BASE")
    base.write_text(base.read_text().replace("sha256:" + "ab" * 32, "latest"))
    with pytest.raises(container.ContainerError, match="base.toml"):
        container.build_request([pack], layout, tmp_path)


def test_packs_must_name_a_stack(tmp_path, collection, upstream):
    collection.add_pack("07", "toy", upstream.base)
    with pytest.raises(container.ContainerError, match=r"pack 07: no \[requires\]\.stack.*choosing the image"):
        _plan("--pack", "07", layout=collection.layout)


def test_the_dockerfile_default_base_is_base_toml():
    from harness.container import image

    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE={image.base(LAYOUT).image}\n" in text


def test_dockerfile_lints_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]')")
    import subprocess

    proc = subprocess.run([exe, "--no-color", str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- the flow, through a fake Docker SDK ------------------------------------------------------------

class _DockerException(Exception):
    pass


class _ImageNotFound(_DockerException):
    pass


class FakeContainer:
    def __init__(self, status=0):
        self.status, self.removed = status, False

    def attach(self, **kw):
        assert kw["demux"] and kw["stream"] and kw["logs"]
        return iter([(b"table: CONFIRMED \xe2\x9c", None), (b"\x93\n", b"progress\n"), (None, b"done\n")])

    def wait(self):
        return {"StatusCode": self.status}

    def stop(self, timeout):
        pass

    def remove(self, force):
        self.removed = True


class FakeClient:
    def __init__(self, have_image=False, build_chunks=None, status=0):
        self.have_image, self.calls, self.container = have_image, [], FakeContainer(status)
        self.listed: list = []
        chunks = build_chunks if build_chunks is not None else [{"stream": "Step 1/9 : FROM base\n"}]
        client = self

        class Images:
            def get(self, tag):
                client.calls.append(("images.get", tag))
                if not client.have_image:
                    raise _ImageNotFound(tag)

            def list(self, name):
                client.calls.append(("images.list", name))
                return client.listed

            def remove(self, image_id):
                client.calls.append(("images.remove", image_id))

            def prune(self, filters):
                client.calls.append(("images.prune", filters))
                return {"SpaceReclaimed": 9_230_000_000}

        class Api:
            def build(self, **kw):
                client.calls.append(("api.build", kw))
                yield from chunks
                if not any("error" in c for c in chunks):
                    client.have_image = True

        class Containers:
            def run(self, **kw):
                client.calls.append(("containers.run", kw))
                return client.container

        self.images, self.api, self.containers = Images(), Api(), Containers()

    def ping(self):
        return True


def fake_sdk(client=None, from_env_error=None):
    def from_env():
        if from_env_error:
            raise _DockerException(from_env_error)
        return client

    return SimpleNamespace(
        from_env=from_env,
        errors=SimpleNamespace(DockerException=_DockerException, ImageNotFound=_ImageNotFound),
        types=SimpleNamespace(Mount=lambda **kw: ("Mount", kw), DeviceRequest=lambda **kw: ("DeviceRequest", kw)),
    )


@pytest.fixture(autouse=True)
def _no_context(monkeypatch):
    """The fake engine needs no build context (the real one is prepared from the index)."""
    from harness.container import image

    monkeypatch.setattr(image, "prepare_context", lambda *a, **k: None)


def test_builds_then_runs_and_relays_output(tmp_path, monkeypatch, capsys):
    client = FakeClient(status=1)
    monkeypatch.setattr(container, "import_sdk", lambda who: fake_sdk(client))
    argv = ["--pack", "05", "--docker", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"),
            "--json", str(tmp_path / "o" / "n.json")]
    assert cli.main(argv) == 1  # the runner's own exit code from inside
    kinds = [c[0] for c in client.calls]
    assert kinds == ["images.get", "api.build", "images.get", "images.prune", "images.list", "containers.run"]
    assert client.calls[3][1] == {"dangling": True, "label": "org.upstream-repro.stage=build"}
    build = client.calls[1][1]
    p = _plan(*argv)
    assert build == {**p.build, "decode": True}
    run = client.calls[5][1]
    assert run["image"] == p.tag and run["command"] == p.run["command"]
    assert run["device_requests"] == [("DeviceRequest", {"count": -1, "capabilities": [["gpu"]]})]
    assert ("Mount", {"target": str(ROOT), "source": str(ROOT), "type": "bind", "read_only": True}) in run["mounts"]
    assert client.container.removed
    out, err = capsys.readouterr()
    assert out == "table: CONFIRMED ✓\n"  # a character split across chunks survives
    assert "progress\ndone\n" in err and "building it" in err
    assert (tmp_path / "o").is_dir() and (tmp_path / "c").is_dir()  # created before the run


def test_a_build_removes_the_same_stacks_images_of_older_contexts_only():
    client = FakeClient()
    repo = "upstream-repro/mamba"
    img = lambda i, *tags: SimpleNamespace(id=i, tags=list(tags))  # noqa: E731
    client.listed = [img("new", f"{repo}:ctx-new"), img("old", f"{repo}:ctx-old"),
                     img("kept", f"{repo}:ctx-old2", "mine/retagged:1"), img("named", f"{repo}:stable")]
    said = []
    assert container.prune_older(client, fake_sdk(client), f"{repo}:ctx-new", said.append) == [f"{repo}:ctx-old"]
    assert [c for c in client.calls if c[0] == "images.remove"] == [("images.remove", "old")]
    assert "older contexts" in said[0]


def test_reuses_an_image_of_the_same_context(tmp_path, monkeypatch, capsys):
    client = FakeClient(have_image=True)
    monkeypatch.setattr(container, "import_sdk", lambda who: fake_sdk(client))
    argv = ["--pack", "09", "--docker", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == 0
    assert [c[0] for c in client.calls] == ["images.get", "containers.run"]
    assert "reusing it" in capsys.readouterr().err


def test_build_failure_names_pack_stage_and_next_step(tmp_path, monkeypatch, capsys):
    client = FakeClient(build_chunks=[{"stream": "Step 5/9 : RUN pip install\n"},
                                      {"error": "THESE PACKAGES DO NOT MATCH THE HASHES"}])
    monkeypatch.setattr(container, "import_sdk", lambda who: fake_sdk(client))
    argv = ["--pack", "05", "--docker", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "pack 05 (stacks mamba): building image" in err and "(stage: build)" in err
    assert "DO NOT MATCH THE HASHES" in err and "python -m harness.envs.locks" in err
    assert "containers.run" not in [c[0] for c in client.calls]
    assert "images.prune" in [c[0] for c in client.calls]  # a failed build's stage is removed too


@pytest.mark.parametrize("stand_in", [None, ModuleType("docker")], ids=["not-importable", "docker-folder"])
def test_missing_sdk_is_a_clear_error(tmp_path, monkeypatch, capsys, stand_in):
    # None: `import docker` raises ImportError; a bare module: what `import docker` finds from the collection's
    # root without the SDK (its docker/ folder, as a namespace package)
    monkeypatch.setitem(sys.modules, "docker", stand_in)
    argv = ["--pack", "05", "--docker", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "pack 05 (stacks mamba): --docker needs the Docker SDK for Python" in err
    assert "(stage: loading the Docker SDK)" in err and "pip install -e '.[docker]'" in err


def test_unreachable_engine_is_a_clear_error(tmp_path, monkeypatch, capsys):
    sdk = fake_sdk(from_env_error="Error while fetching server API version: No such file or directory")
    monkeypatch.setattr(container, "import_sdk", lambda who: sdk)
    argv = ["--pack", "09", "--docker", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "pack 09 (stacks torch): the Docker engine cannot be reached" in err
    assert "(stage: connecting to the engine)" in err and "start the Docker daemon" in err


def test_no_gpu_runtime_is_a_clear_error(tmp_path, monkeypatch, capsys):
    client = FakeClient(have_image=True)

    def refuse(**kw):
        raise _DockerException('could not select device driver "" with capabilities: [[gpu]]')

    client.containers.run = refuse
    monkeypatch.setattr(container, "import_sdk", lambda who: fake_sdk(client))
    argv = ["--pack", "09", "--docker", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "(stage: run)" in err and "NVIDIA Container Toolkit" in err


@pytest.mark.parametrize("argv", [["--lint"], ["--list"], ["--report", "05"], ["--bundle", "x", "--pack", "05"]])
def test_host_commands_refuse_docker(argv, capsys):
    assert cli.main([*argv, "--docker"]) == cli.EXIT_USAGE
    assert "--docker does not apply to" in capsys.readouterr().err


def test_real_sdk_types_accept_the_request(tmp_path):
    try:
        docker = container.import_sdk("test")
    except container.ContainerError:
        pytest.skip("the Docker SDK is not installed (pip install -e '.[docker]')")
    p = _plan("--pack", "05", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"))
    kwargs = container.sdk_run_kwargs(p.run, docker)
    assert isinstance(kwargs["device_requests"][0], docker.types.DeviceRequest)
    assert kwargs["device_requests"][0]["Count"] == -1 and kwargs["device_requests"][0]["Capabilities"] == [["gpu"]]
    mount = kwargs["mounts"][0]
    assert isinstance(mount, docker.types.Mount) and mount["ReadOnly"] is True and mount["Type"] == "bind"
    # the containers.run keyword arguments are ones the SDK knows
    from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS

    known = set(RUN_CREATE_KWARGS) | set(RUN_HOST_CONFIG_KWARGS) | {"detach", "image", "command"}
    assert set(kwargs) <= known, set(kwargs) - known
    import inspect

    assert set(p.build) <= set(inspect.signature(docker.APIClient.build).parameters)


@pytest.mark.parametrize("folder", manifest.discover(LAYOUT), ids=lambda f: f.name)
def test_every_pack_gets_a_plan(folder, tmp_path):
    pack = manifest.load_pack(folder, LAYOUT)
    args, parser = _args("--pack", pack.id, "--cache-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"))
    if any(locks.load(LAYOUT, s, "3.12", "linux-x86_64").builds for s in locks.pack_stacks(pack)):
        with pytest.raises(container.ContainerError, match=r"builds from source, which an image build does not do"):
            container.plan([pack], args, parser, LAYOUT, env={}, uid_gid=(0, 0))
        return
    p = container.plan([pack], args, parser, LAYOUT, env={}, uid_gid=(0, 0))
    assert pack.stack in p.stacks and p.run["command"][2:4] == ["--pack", pack.id]
    assert bool(p.run["device_requests"]) is pack.gpu
