"""skip_init: packages registered without running their __init__, dotted names included."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.sources import importing


def _tree(root: Path) -> None:
    for pkg in ("top", "top/core", "top/core/leaf"):
        (root / pkg).mkdir(parents=True)
    (root / "top/__init__.py").write_text("raise ImportError('top __init__ ran')\n")
    (root / "top/core/__init__.py").write_text("raise ImportError('core __init__ ran')\n")
    (root / "top/core/leaf/__init__.py").write_text("VALUE = 7\n")


def test_dotted_skip_init_imports_the_leaf_without_parent_inits(tmp_path):
    _tree(tmp_path / "src")
    entries = importing.path_entries(tmp_path / "src", (".",), ("top.core", "top"), tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, entries))}
    code = "import top.core.leaf as m, top; print(m.VALUE, top.core.leaf is m)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "True"]


def test_dotted_skip_init_under_a_namespace_parent(tmp_path):
    # megatron/ has no __init__.py (a namespace package); megatron.core's __init__ must not run
    _tree(tmp_path / "src")
    (tmp_path / "src/top/__init__.py").unlink()
    entries = importing.path_entries(tmp_path / "src", (".",), ("top.core",), tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, entries))}
    code = "import top.core.leaf as m; print(m.VALUE)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7"]


def test_skip_init_names_a_missing_package(tmp_path):
    _tree(tmp_path / "src")
    with pytest.raises(importing.ImportSetupError, match="'top.nothing' not found"):
        importing.path_entries(tmp_path / "src", (".",), ("top.nothing",), tmp_path / "site")
