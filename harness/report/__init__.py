"""What a run says and keeps: the console table and the JSON / JUnit files, markdown (run reports, STATUS.md,
the upstream issue body in each repository's own template), receipts and their checks, exports to attach
upstream, figures, --compare and --merge.

May import: core, sources (git, for the collection's commit in receipts), envs (a stack's pins, for the
steps an issue body gives), run.kinds (a receipt's verdict is
re-derived with the pack's plan)."""
