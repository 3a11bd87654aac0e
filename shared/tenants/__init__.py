"""Tenants: the services and pipelines sharing one fal account."""
