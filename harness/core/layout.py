"""Where things live: the collection's own folders and the user's source cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """The pristine-source cache: $REPRO_CACHE_DIR, else $XDG_CACHE_HOME/upstream-repro."""
    explicit = os.environ.get("REPRO_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().resolve() / "upstream-repro"


def default_env_dir() -> Path:
    """Where provisioned environments and their unit store live: $REPRO_ENV_DIR, else <cache dir>/envs."""
    explicit = os.environ.get("REPRO_ENV_DIR")
    return Path(explicit).expanduser().resolve() if explicit else default_cache_dir() / "envs"


@dataclass(frozen=True)
class Layout:
    """The folders of one collection checkout (tests point this at a temporary copy)."""

    root: Path = ROOT

    @property
    def packs(self) -> Path:
        return self.root / "packs"

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def evidence(self) -> Path:
        return self.root / "evidence"

    @property
    def runs(self) -> Path:
        return self.root / "runs"
