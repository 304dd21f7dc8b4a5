"""--docker: the image of a set of stacks (its base, its build context, its tag) and the run of the same
runner command inside it, through the Docker SDK.

May import: core, envs."""
