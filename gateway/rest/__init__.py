"""falq's own REST API (/v1/...) and its OpenAPI document."""
