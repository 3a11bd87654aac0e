"""The worker side of the global limits: admission before each submit."""
