"""The background passes that recover stranded work (see docs/internals/recovery.md)."""
