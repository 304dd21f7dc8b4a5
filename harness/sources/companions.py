"""Companion sources: other upstream releases a reproducer imports next to its target.

Pack 16 patches Megatron's Float16Module but launches mamba_ssm's MIMO kernel, so it needs mamba-ssm's
source too. A companion is a pinned release sdist (sha256-checked, cached like a target's sdist, carried
by offline bundles); it is never patched, and both stages import the same tree, after the target's.
"""

from __future__ import annotations

from pathlib import Path

from ..core.manifest import Pack
from . import importing
from . import upstream as sources
from .upstream import Progress


def acquire(pack: Pack, cache: Path, progress: Progress) -> list[sources.Source]:
    return [sources.acquire_sdist(c.repo, c.ref, c.sdist, c.sha256, cache, progress) for c in pack.companions]


def import_roots(pack: Pack, acquired: list[sources.Source]) -> tuple[Path, ...]:
    """PYTHONPATH roots of every companion (its import paths inside its pristine tree, as acquired)."""
    roots: list[Path] = []
    for companion, source in zip(pack.companions, acquired, strict=True):
        roots += importing.python_path(source.tree, companion.import_paths)
    return tuple(roots)


def skip_init(pack: Pack) -> tuple[str, ...]:
    return tuple(name for c in pack.companions for name in c.skip_init)
