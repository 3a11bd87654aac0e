"""Sending falq's per-job callbacks from the outbox."""
