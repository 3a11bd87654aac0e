"""One bounded step of a job per task delivery: submit, follow, mirror (see docs/internals/job-lifecycle.md)."""
