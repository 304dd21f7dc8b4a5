"""--bisect: the first-parent history between two upstream commits (online, or from a bundle's compact
history) and the search for the commit where a pack's reproducer changes its sentinel.

May import: core, sources, envs, run, offline, report (a headline for each tested commit)."""
