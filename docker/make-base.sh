#!/usr/bin/env bash
# Make a Debian base image for docker/Dockerfile without a container registry: debootstrap a minimal
# Debian from Debian's archive, with what the runner needs (Python and its venv module, git, g++), and
# import it into the local Docker engine. Needs root and debootstrap.
#   docker/make-base.sh upstream-repro-base:bookworm-minbase [SUITE] [MIRROR]
# Then: REPRO_DOCKER_BASE=upstream-repro-base:bookworm-minbase REPRO_DOCKER_PYTHON=3.11 \
#       python runner.py --pack 18 --docker   (bookworm's python3 is 3.11)
set -euo pipefail
tag="${1:?usage: make-base.sh IMAGE:TAG [SUITE] [MIRROR]}"
suite="${2:-bookworm}"
mirror="${3:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,git,g++,ca-certificates,xz-utils \
  "$suite" "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$tag"
echo "made $tag"
