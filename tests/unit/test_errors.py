"""The error tree drawn at the top of ``falq.shared.errors`` is the real class hierarchy.

Every exception class defined anywhere in falq is either in the drawing (and then a
:class:`FalqError`, with exactly the direct bases drawn) or named among its internal
signals (and then not a ``FalqError``: those never reach a user).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import pytest

from falq.shared import errors
from falq.shared.errors import FalqError

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "workers", "producers", "emulator", "gateway", "ops", "cli", "testing")

NODE = re.compile(r"^(?P<indent> *)(?P<mark>[*~-]) (?P<name>\w+)"
                  r"(?:\s+\[(?P<module>[\w.]+)\])?(?:\s+\(also (?P<also>[\w, ]+)\))?\s*$")


def drawing(doc: str) -> tuple[dict[str, tuple[str, str | None, set[str]]], dict[str, str]]:
    """Parse the drawing: tree name -> (module, drawn parent, also-bases); signal name -> module."""
    tree: dict[str, tuple[str, str | None, set[str]]] = {}
    signals: dict[str, str] = {}
    parents: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = NODE.match(line.replace("    ", "", 1) if line.startswith("    ") else line)
        if not m:
            continue
        name, module = m["name"], m["module"] or "falq.shared.errors"
        assert name not in tree and name not in signals, f"{name} is drawn twice"
        if m["mark"] == "~":
            signals[name] = module
            continue
        depth = len(m["indent"])
        while parents and parents[-1][0] >= depth:
            parents.pop()
        also = {a.strip() for a in (m["also"] or "").split(",") if a.strip()}
        tree[name] = (module, parents[-1][1] if parents else None, also)
        parents.append((depth, name))
    return tree, signals


TREE, SIGNALS = drawing(errors.__doc__ or "")


def resolve(name: str, module: str) -> type[BaseException]:
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseException), f"{module}.{name} is no exception"
    assert cls.__module__ == module, f"{name} is drawn in [{module}] but defined in {cls.__module__}"
    return cls


def test_the_drawing_is_parsed() -> None:
    assert TREE["FalqError"] == ("falq.shared.errors", None, set())
    assert TREE["FalIngressError"][1] == "FalTransientError"
    assert TREE["JobTimeout"] == ("falq.shared.errors", "FalqError", {"TimeoutError"})
    assert SIGNALS["Stop"] == "falq.workers.steps.step"
    assert len(TREE) >= 40


@pytest.mark.parametrize("name", sorted(TREE))
def test_each_drawn_error_has_exactly_the_drawn_bases(name: str) -> None:
    module, parent, also = TREE[name]
    cls = resolve(name, module)
    bases = {b.__name__ for b in cls.__bases__}
    drawn = ({parent} if parent else {"Exception"}) | also
    assert bases == drawn, f"{name}: the class derives from {sorted(bases)}, the drawing says {sorted(drawn)}"
    assert issubclass(cls, FalqError)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_internal_signals_stay_outside_the_tree(name: str) -> None:
    assert not issubclass(resolve(name, SIGNALS[name]), FalqError)


def defined_exceptions() -> set[tuple[str, str]]:
    """Every exception class defined in falq's source as (name, module), found without importing.

    A class is an exception if one of its bases is a builtin exception or (transitively)
    another class found here; bases are matched by their last dotted name.
    """
    classes: list[tuple[str, str, list[str]]] = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = "falq." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            classes += [(node.name, module, [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases])
                        for node in ast.walk(ast.parse(path.read_text(), str(path)))
                        if isinstance(node, ast.ClassDef)]
    exc = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
           and issubclass(getattr(builtins, n), BaseException)}
    while True:  # grow the set of exception names until no class adds one
        more = {name for name, _, bases in classes if name not in exc and exc.intersection(bases)}
        if not more:
            return {(name, module) for name, module, _ in classes if name in exc and name not in dir(builtins)}
        exc |= more


def test_every_exception_class_in_falq_is_drawn() -> None:
    found = defined_exceptions()
    assert {("Stop", "falq.workers.steps.step"), ("FalIngressError", "falq.shared.errors")} <= found  # the scan works
    drawn = {(n, m) for n, (m, _, _) in TREE.items()} | set(SIGNALS.items())
    missing = sorted(f"{m}.{n}" for n, m in found - drawn)
    assert missing == [], f"exception classes missing from the drawing in falq.shared.errors: {missing}"
