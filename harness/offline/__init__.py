"""Offline bundles for GPU nodes without network: everything the selected packs need (their stacks' units,
their sources, the runner's own dependencies), hashed; on the node, checked before anything is unpacked or
imported (boot, standard-library only) and unpacked once.

May import: core, sources, envs."""
