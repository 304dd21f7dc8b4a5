"""Running packs: the stage plans of each kind of pack (kinds), the one loop that runs a plan's stages in
their environments (pipeline), one stage as a subprocess (execution), the output protocol (sentinels), the
verdict (verdicts), and repeats.

May import: core, sources, envs."""
