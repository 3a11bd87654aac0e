"""Bulk files and batches: parse, enqueue, follow."""
