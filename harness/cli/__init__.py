"""The command line: its options and modes (options), what each mode does (main), running the selected packs
(runs), and --list / --lint (listing).

May import: everything in the harness; nothing imports it."""
