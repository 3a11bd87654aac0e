"""falq's Redis scripts (shared/lua, loaded by falq.shared.scripts) against a real redis-server:
every script compiles in Redis (SCRIPT LOAD, so a syntax error fails here), opens with its
KEYS/ARGV/returns header, has exactly one owner, and the shared library agrees with Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from falq.shared import scripts
from falq.shared.jobs.records import TERMINAL
from falq.shared.keys import HOLE, Keys

LUA_DIR = Path(scripts.__file__).resolve().parent / "lua"


def test_every_lua_file_is_a_known_script_and_every_operation_has_an_owner() -> None:
    files = sorted(p.stem for p in LUA_DIR.glob("*.lua") if p.stem != scripts.LIB)
    assert files == scripts.names()
    defined = sorted(f"{n}.{op}" for n in files for op in scripts.operations(n))
    assert defined == sorted(scripts.OWNERS)
    owners = {n: {o.rsplit(".", 1)[0] for q, o in scripts.OWNERS.items() if q.split(".")[0] == n} for n in files}
    assert all(len(classes) == 1 for classes in owners.values()), f"one owner class per script: {owners}"


@pytest.mark.parametrize("name", scripts.names())
def test_script_loads_into_redis_and_documents_its_interface(r: redis.Redis, name: str) -> None:
    sha = r.script_load(scripts.source(name))
    assert r.script_exists(sha) == [True]
    head = scripts.header(name)
    assert head.startswith(f"{name}:"), f"{name}.lua must open with '-- {name}: what it does'"
    listed = "operations: " + ", ".join(scripts.operations(name)) + "."
    assert listed in " ".join(head.split()), f"{name}.lua's header lists its operations"
    for op in scripts.operations(name):
        doc = scripts.op_header(f"{name}.{op}")
        assert doc.startswith(f"{op}:"), f"{name}.lua: operation {op} must open with '-- {op}: what it does'"
        for part in ("KEYS", "ARGV", "Returns"):
            assert part in doc, f"{name}.lua's operation {op} does not say its {part}"


def test_an_unknown_operation_is_an_error_naming_it(r: redis.Redis) -> None:
    lease = scripts.register(r, "lease.release")
    wrong = scripts.Op(lease.script, "nonsense")
    with pytest.raises(redis.ResponseError, match=r"lease\.lua: no operation nonsense"):
        wrong(keys=["k1", "k2", ""], args=["t", "id"])
    with pytest.raises(KeyError, match=r"lease\.nonsense"):
        scripts.register(r, "lease.nonsense")


@pytest.mark.parametrize("name", scripts.names())
def test_scripts_never_spell_a_key_or_take_the_prefix(name: str) -> None:
    body = (LUA_DIR / f"{name}.lua").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
    assert not re.search(r"'[:a-z_]*:[a-z_]+:'|\.\. ?':[a-z_]", code), f"{name}.lua builds a key by concatenation"
    assert "prefix" not in code, f"{name}.lua takes the key prefix instead of its keys"


def test_lib_key_fills_templates_made_by_keys(r: redis.Redis) -> None:
    k = Keys("falq")
    fill = r.register_script("local lib = {}\n" + _lib_functions() + "\nreturn lib.key(ARGV[1], ARGV[2], ARGV[3])")
    day = "2026-12-06"
    assert fill(args=[k.tenant_spend(HOLE, HOLE), day, "acme"]) == k.tenant_spend(day, "acme").encode()
    assert fill(args=[k.job(HOLE), "a%1b", ""]) == k.job("a%1b").encode()
    assert fill(args=[k.fair_ready(HOLE, HOLE), "bulk", "t-1"]) == k.fair_ready("bulk", "t-1").encode()


def test_lib_terminal_states_are_the_records_terminal_states(r: redis.Redis) -> None:
    from falq.shared.jobs.records import STATES

    check = r.register_script("local lib = {}\n" + _lib_functions() +
                              "\nlocal out = {}\nfor _, s in ipairs(ARGV) do"
                              " if lib.is_terminal(s) then out[#out + 1] = s end end\nreturn out")
    assert {x.decode() for x in check(args=list(STATES))} == set(TERMINAL)


def _lib_functions() -> str:
    return (LUA_DIR / "lib.lua").read_text().split("local lib = {}", 1)[1]


def test_each_script_has_one_caller_and_no_python_module_holds_lua() -> None:
    import importlib
    import inspect

    root = LUA_DIR.parent.parent
    for name, owner in scripts.OWNERS.items():
        module, cls, meth = owner.rsplit(".", 2)
        method = getattr(getattr(importlib.import_module(module), cls), meth)
        assert f'"{name}"' in inspect.getsource(importlib.import_module(module)), (name, owner)
        assert callable(method), owner
    stray = [str(p.relative_to(root)) for folder in ("shared", "workers", "producers", "gateway", "cli", "ops")
             for p in (root / folder).rglob("*.py")
             if p.name != "scripts.py" and ("register_script(" in (t := p.read_text(encoding="utf-8"))
                                            or "redis.call(" in t)]
    assert stray == [], f"Lua outside shared/lua (load it with falq.shared.scripts.register): {stray}"
