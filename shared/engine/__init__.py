"""Celery, the engine that carries job steps: the app, the hardened Redis transport, publishing."""
