"""Fair dispatch between tenants (see docs/internals/fair-dispatch.md)."""
