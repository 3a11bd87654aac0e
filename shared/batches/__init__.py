"""Batches and chains of jobs."""
