"""The job record and its store in Redis."""
