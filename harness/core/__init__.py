"""What a pack is and what a run yields: the pack manifest (pack.toml) and its schema, the result types and
the words of the protocol (verdicts, sentinels, patch states), where the collection's folders are, and the
file-system helpers everything shares (atomic writes, locks, tree manifests).

May import: the standard library, packaging and jsonschema; nothing else of the harness. model, layout,
fsutil and treehash are standard-library only (the offline boot imports them)."""
