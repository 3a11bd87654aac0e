"""Filters and merging shared by every reader that combines Redis (live) and the catalogue
(history): the same filters applied to a record in memory, and one newest-first list of both
with each job once (the live copy wins). Imports nothing heavy (no SQLAlchemy).

Example::

    live = [r for r in store.find(None, limit=500) if record_matches(r, text="fox")]
    merge_newest(live, catalogue.search(CatalogueQuery(text="fox")), limit=50)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from falq.shared.jobs.records import JobRecord

_WORD = re.compile(r"\w+", re.UNICODE)


def record_matches(rec: JobRecord, *, tenant: str | None = None, endpoint: str | None = None,
                   batch_id: str | None = None, text: str | None = None,
                   metadata: dict[str, str] | None = None) -> bool:
    """Whether ``rec`` passes the filters a catalogue search takes (``text``: every word is in
    the prompt, case-insensitively; metadata values compare as text or as JSON)."""
    if tenant is not None and rec.tenant != tenant:
        return False
    if endpoint and rec.endpoint != endpoint:
        return False
    if batch_id and rec.batch_id != batch_id:
        return False
    for key, want in (metadata or {}).items():
        if key not in rec.metadata:
            return False
        have = rec.metadata[key]
        if not (str(have) == want or json.dumps(have, separators=(",", ":")) == want):
            return False
    if text and text.strip():
        prompt = str(rec.input.get("prompt") or "").lower()
        if not all(w.lower() in prompt for w in _WORD.findall(text)):
            return False
    return True


def merge_newest(live: Iterable[JobRecord], archived: Iterable[JobRecord], limit: int) -> list[JobRecord]:
    """Both lists as one, newest first (by creation), each job once: the live record wins."""
    out: dict[str, JobRecord] = {}
    for rec in live:
        out.setdefault(rec.id, rec)
    for rec in archived:
        out.setdefault(rec.id, rec)
    return sorted(out.values(), key=lambda r: (r.created_at, r.id), reverse=True)[:limit]
