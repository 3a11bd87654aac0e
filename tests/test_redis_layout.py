"""docs/reference/redis-layout.md is generated from the code (falq.ops.redis_layout): it must be
what the generator writes now, and every key family of falq.shared.keys.Keys must have its row in
the module's table (and every row a family), so the page lists them all."""

from __future__ import annotations

from falq.ops.redis_layout import PAGE, families, render
from falq.shared import scripts


def test_every_key_family_has_a_row_and_every_row_a_family() -> None:
    fams, missing, extra = families()
    assert missing == [], f"Keys members without a row in falq/shared/keys.py's table: {missing}"
    assert extra == [], f"rows of falq/shared/keys.py's table that no Keys member makes: {extra}"
    assert len(fams) >= 60


def test_the_committed_layout_page_is_current() -> None:
    text = render()
    for name in scripts.names():
        assert f"### {name}\n" in text
    assert PAGE.read_text(encoding="utf-8") == text, (
        "docs/reference/redis-layout.md is stale: run `python -m falq.ops.redis_layout` and commit it")
