"""--lint: the collection's own files checked without fetching or running anything (manifests, patches,
reproducers' sentinels read from their syntax tree, READMEs, stacks), and the words product files must not use.

May import: core, sources, envs."""
