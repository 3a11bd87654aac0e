"""falq's administration service: limits, budget, tenants, retries, cancels, dead letters and callbacks.

The ``falq`` CLI (``falq limits``, ``falq budget``, ``falq tenants``, ``falq retry``, ``falq cancel``,
``falq jobs --state failed --errors``, ``falq callbacks``) and the HTTP gateway (``/v1/limits``,
``/v1/budget``, ``/v1/tenants``, ``/v1/jobs/{id}/retry``, ``/v1/retry-failed``,
``/v1/jobs/{id}/cancel`` and fal's cancel) are thin layers over :class:`Admin`: they parse
arguments or JSON, call it, and render the answer. Every value is checked once, by a pydantic
model next to the domain it guards; a bad one raises :class:`~falq.shared.errors.InvalidInput`
with one :class:`~falq.shared.errors.FieldError` per broken rule (the CLI prints
``error: field: rule`` and exits 2, the gateway answers 422 with the same field and text in
``detail``). Nothing is written unless every value is valid.

Where each part lives (and states its rules):

========================================  =========================================================
:mod:`falq.shared.limits.fields`          the rules of a limits change and of the budget
                                          (``LimitsFields``, ``BudgetFields``, ``limits_request``, ...)
:mod:`falq.shared.tenants.fields`         the rules of a tenant's settings, its name, an API key
:mod:`falq.shared.since`                  the rule of a ``since`` (``Since``, ``validate_since``)
:mod:`falq.shared.validation`             pydantic's errors as falq's (``Checked``), lenient numbers
:mod:`falq.producers.admin.limits`        reading and writing the limits and the budget
:mod:`falq.producers.admin.tenants`       tenants and API keys (the rules needing the stored ones)
:mod:`falq.producers.admin.jobs`          retry, retry of the failed, cancel, job listings
:mod:`falq.producers.admin.callbacks`     the callback outbox: listings, log, redelivery
:mod:`falq.producers.admin.service`       :class:`Admin`, all of them over one deployment
========================================  =========================================================

Example::

    admin = Admin(Falq())
    admin.limits_set(rate=20, burst=1, endpoint_caps={"fal-ai/qwen-image-2/pro/edit": 4})
    admin.limits_set(rate=-1)      # InvalidInput: rate: must be 0 (unlimited) or a number from 0.001 to 1000000
    admin.budget_set(50)           # BudgetView(day=..., spent_usd=..., budget_usd=50.0, ...)
    [out] = admin.retry(["8f3e..."]); out.retried   # also for a job only the catalogue holds
    admin.cancel("8f3e...").outcome  # 'cancelled' | 'requested' | 'final' (an archived job: 'final')
    admin.callbacks_pending()        # [CallbackView(job_id=..., tries=2, next_at=..., ...)]
"""

from falq.producers.admin.jobs import CancelOutcome, RetryOutcome
from falq.producers.admin.limits import BudgetView, LimitsResult, LimitsView
from falq.producers.admin.service import Admin

__all__ = ["Admin", "BudgetView", "CancelOutcome", "LimitsResult", "LimitsView", "RetryOutcome"]
