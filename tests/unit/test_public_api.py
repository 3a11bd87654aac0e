"""``falq``'s public API is exactly its ``__all__``: what a user imports from ``falq``.

As httpx's ``tests/test_exported_members.py``: a public name added to ``falq`` without
exporting it (or exported and gone) fails here, so the API changes only on purpose.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import falq
from falq.shared.errors import FalqError

ROOT = Path(__file__).resolve().parents[2]


def public_names() -> list[str]:
    """The module's public attributes, layer subpackages (``falq.shared`` ...) aside."""
    return [name for name, value in vars(falq).items() if not name.startswith("_")
            and not (isinstance(value, types.ModuleType) and value.__name__ == f"falq.{name}")]


def test_all_public_names_are_exported() -> None:
    for name in falq.__all__:
        getattr(falq, name)  # imports the lazy ones, so vars(falq) holds everything
    assert falq.__all__ == sorted(public_names(), key=str.casefold)


def test_the_client_the_handle_and_the_record_are_exported() -> None:
    from falq.producers.client import Falq, JobHandle, JobRequest
    from falq.shared.jobs.records import JobRecord

    assert (falq.Falq, falq.JobHandle, falq.JobRequest, falq.JobRecord) == (Falq, JobHandle, JobRequest, JobRecord)
    assert set(falq.__all__) <= set(dir(falq))


def test_every_error_the_client_raises_is_exported() -> None:
    # The classes raised by name in the Python API (producers/client.py) are the ones a
    # user catches; each must be importable from falq itself.
    tree = ast.parse((ROOT / "producers" / "client.py").read_text())
    raised = {node.exc.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name)}
    assert {"InvalidInput", "JobNotFound", "JobTimeout", "RedisMemoryFull"} <= raised
    assert sorted(raised - set(falq.__all__)) == []
    for name in raised:
        assert issubclass(getattr(falq, name), FalqError)


def test_the_families_and_the_field_error_are_exported() -> None:
    assert issubclass(falq.InvalidInput, falq.FalqError) and issubclass(falq.InvalidInput, ValueError)
    assert issubclass(falq.RetryableError, falq.FalqError) and issubclass(falq.PermanentError, falq.FalqError)
    assert issubclass(falq.JobTimeout, TimeoutError) and issubclass(falq.JobTimeout, falq.FalqError)
    exc = falq.InvalidInput([falq.FieldError("prompt", "must not be empty")])
    assert str(exc) == "prompt: must not be empty" and exc.errors[0].field == "prompt"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        falq.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_importing_falq_stays_light() -> None:
    # `falq --help` and `from falq import InvalidInput` must not pay for Celery, Redis or pydantic.
    code = "import sys, falq; print(sorted(m for m in ('celery', 'redis', 'pydantic', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
