"""The durable outbox of per-job callbacks (see docs/internals/callbacks.md)."""
