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


def test_every_lua_file_is_a_known_script_and_every_known_script_has_a_file() -> None:
    files = sorted(p.stem for p in LUA_DIR.glob("*.lua") if p.stem != scripts.LIB)
    assert files == scripts.names() == sorted(scripts.OWNERS)


@pytest.mark.parametrize("name", scripts.names())
def test_script_loads_into_redis_and_documents_its_interface(r: redis.Redis, name: str) -> None:
    sha = r.script_load(scripts.source(name))
    assert r.script_exists(sha) == [True]
    head = scripts.header(name)
    assert head.startswith(f"{name}:"), f"{name}.lua must open with '-- {name}: what it does'"
    for part in ("KEYS", "ARGV", "Returns"):
        assert part in head, f"{name}.lua's header does not say its {part}"


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
