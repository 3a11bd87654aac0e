"""What every part of the administration service shares: the deployment it administers.

:class:`AdminBase` holds the producer client and the settings; the parts of
:class:`~falq.producers.admin.Admin` (limits, tenants, jobs, callbacks) build on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from falq.producers.client import Falq
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.settings import Settings
from falq.shared.tenants.store import TenantStore

#: The most records one listing or one bulk retry/redelivery goes through.
MAX_LIMIT = 100_000
LIMIT_RULE = f"must be an integer from 1 to {MAX_LIMIT}"
JOB_IDS_RULE = "must name at least one job"


def at_least_one_id(ids: Iterable[str]) -> list[str]:
    """The ids, each once, in their order; raises :class:`InvalidInput` when there is none."""
    found = list(dict.fromkeys(ids))
    if not found:
        raise InvalidInput([FieldError("job_ids", JOB_IDS_RULE)])
    return found


class AdminBase:
    """One falq deployment (its Redis, its settings), as the administration sees it.

    Parameters:
        falq: the producer client (its Redis connection, job store and Celery app).
        settings: settings to read the key prefix, the fal key and the defaults from
            (default: the client's).
    """

    def __init__(self, falq: Falq, settings: Settings | None = None) -> None:
        self.falq = falq
        self.settings = settings or falq.settings

    @property
    def redis(self) -> Any:
        return self.falq.redis

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    @property
    def tenant_store(self) -> TenantStore:
        return TenantStore(self.redis, prefix=self.prefix)
