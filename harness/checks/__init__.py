"""--lint: the collection's own files checked without fetching or running anything (manifests, patches,
reproducers' sentinels read from their syntax tree, READMEs, stacks).

May import: core, sources, envs."""
