"""Global limits on one fal account, shared by every worker (see docs/internals/limiter.md)."""
