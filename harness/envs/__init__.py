"""Pinned environments: the stacks' locks (stacks/<stack>/), the unit store of installed distributions, and
provisioning a stack's environment once (from the index, a bundle or a wheelhouse) for the stages to run in;
what a machine offers (its GPUs, its torch) and whether it meets a pack's requirements.

May import: core, sources (the index), run.execution (the helper that kills a command's whole process tree)."""
