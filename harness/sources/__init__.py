"""Upstream code: refs resolved, pristine trees fetched (git or a release sdist) into a cache whose every entry
is checked against its manifest, fresh work copies, patches read and applied, companion releases.

May import: core. extract is standard-library only (the offline boot imports it)."""
