"""The one settings object of falq, read from the environment (and an optional ``.env``).

Every knob is a ``FALQ_*`` variable, except the names the ecosystem already owns:
``FAL_KEY`` (as fal's clients read it) and the standard AWS credential variables.
Secrets are :class:`pydantic.SecretStr`, so they print as ``**********`` everywhere.

Example::

    >>> from falq.shared.settings import Settings
    >>> s = Settings(fal_key="k", redis_url="redis://127.0.0.1:6399/0")
    >>> s.broker_url            # follows the Redis URL unless set
    'redis://127.0.0.1:6399/0'
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_FAL_QUEUE_URL = "https://queue.fal.run"
DEFAULT_FAL_PLATFORM_URL = "https://api.fal.ai/v1"
#: What ``X-Fal-Queue-Priority: low`` means on fal (docs "common parameters"), shown with each setting.
PRIORITY_HELP = ("X-Fal-Queue-Priority sent with this lane's submissions: normal (default) or low. On fal, low "
                 "waits behind every customer's normal requests on the endpoint's one shared queue, without "
                 "bound on a busy endpoint, and no discount for low is documented. Choose low only for work that "
                 "may wait; it can also be chosen per tenant (falq tenants set NAME --priority low) and per batch "
                 "(falq bulk --priority low).")
#: fal's media hosts. Output images are fetched only from these (plus configured extras).
DEFAULT_MEDIA_HOSTS = "fal.media,*.fal.media,fal.run,*.fal.run,storage.googleapis.com"


class Settings(BaseSettings):
    """All of falq's configuration. Every field carries a ``description``: the documentation's
    configuration page (docs/reference/configuration.md) is generated from them."""

    model_config = SettingsConfigDict(
        env_prefix="FALQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- fal ---------------------------------------------------------------------------
    fal_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FAL_KEY", "fal_key"),
        description="fal API key, read as `FAL_KEY` as fal's own clients do. Only workers need it.",
    )
    fal_queue_url: str = Field(
        DEFAULT_FAL_QUEUE_URL,
        description="fal's queue API. Point it at `falq emulator` for offline use.",
    )
    fal_rest_url: str = Field(
        "https://rest.fal.ai",
        description="fal's REST host, used for storage uploads of local edit images.",
    )
    fal_platform_url: str = Field(
        DEFAULT_FAL_PLATFORM_URL,
        description="fal's platform API (FALQ_FAL_PLATFORM_URL: pricing, billing, storage). falq reads the "
                    "account's unit prices from GET {url}/models/pricing with the workers' FAL_KEY; `falq report "
                    "reconcile` reads GET {url}/models/billing-events with FAL_ADMIN_KEY; and falq calls "
                    "``/storage/files/sign`` with the workers' FAL_KEY when an output URL answers 403/404 "
                    "on an account with restricted file access, and mirrors the image through the signed URL.",
    )
    fal_http_timeout_s: float = Field(
        30.0,
        description="Per-read timeout of calls to fal (seconds); a whole answer must arrive within twice this.",
    )
    fal_stream_read_timeout_s: float = Field(
        45.0, gt=0,
        description=(
            "Silence after which a status stream counts as dropped. fal sends a `: ping` comment about every 15 s, so "
            "this must stay well above 15 (a shorter one reconnects per job every few seconds: hundreds of new "
            "connections a second with thousands in flight)."
        ),
    )
    fal_priority_interactive: Literal["normal", "low"] = Field("normal", description=PRIORITY_HELP)
    fal_priority_bulk: Literal["normal", "low"] = Field("normal", description=PRIORITY_HELP)
    fal_admin_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FAL_ADMIN_KEY", "fal_admin_key"),
        description="FAL_ADMIN_KEY (optional, a secret): an ADMIN-scope fal key, used only by `falq report "
                    "reconcile` to read fal's billing events. Never logged, recorded or sent to workers.")
    pricing_refresh_s: float = Field(
        3600.0, ge=10,
        description="How often the account's unit prices are read again from fal's pricing API (seconds). "
                    "The prices are cached in Redis and shared by every worker and producer.")
    pricing_retry_s: float = Field(
        60.0, ge=1,
        description="After the pricing API could not be read, falq uses the configured list prices "
                    "(FALQ_PRICE_STANDARD / FALQ_PRICE_PRO, logged as a warning, recorded as "
                    "price_source=list_price_fallback) and asks fal again after this many seconds.")
    fal_start_timeout_s: float | None = Field(
        900.0, gt=1,
        description=(
            "Seconds fal may keep a request waiting before a runner starts it (queue wait, runner "
            "acquisition, fal's own retries). fal drops a request not started in time, unbilled, and the "
            "job fails as start_timeout. Sent as X-Fal-Request-Start-Timeout and as the deprecated "
            "X-Fal-Request-Timeout (fal: the new name wins when both are sent). This, not a falq "
            "deadline, bounds queue time: queue time is never billed. Unset: no start timeout."
        ),
    )
    fal_media_expiry_s: int | None = Field(
        7 * 24 * 3600, ge=60,
        description=(
            "`X-Fal-Object-Lifecycle-Preference` `expiration_duration_seconds` for the media fal generates: how long "
            "fal's public CDN copy lives. It is set at submit (fal has no later per-request call), long enough to "
            "outlast mirroring retries. Unset: fal's default."
        ),
    )
    fal_store_io: bool = Field(
        True,
        description=(
            "`X-Fal-Store-IO`: false sends `0` and keeps payloads out of fal's 30-day history (results are then kept by"
            " fal for about an hour, 6 minutes at 10 KB or more)."
        ),
    )
    fal_no_retry: bool = Field(
        False,
        description=(
            "`x-fal-no-retry`: fal retries failed runners up to 10 times itself; true turns that off so falq's own "
            "attempts are the only ones (see the fal compatibility page)."
        ),
    )
    submit_uncertain: Literal["fail", "resubmit"] = Field(
        "fail",
        description=(
            "A submit whose answer was lost after the request was sent, or a 5xx without a request id fal may have sent"
            " after creating it: `fail` the job (never pay twice) or `resubmit` (a new, counted attempt)."
        ),
    )
    media_hosts: str = Field(
        DEFAULT_MEDIA_HOSTS,
        description="Hosts output images may be fetched from (comma separated; `*.` matches subdomains).",
    )
    allow_private_media: bool = Field(
        False,
        description="Allow fetching media from private/loopback addresses (tests and the emulator only).",
    )
    max_image_bytes: int = Field(
        64 * 1024 * 1024,
        description="Size cap per output image in bytes (declared and streamed).",
    )

    # --- Redis / broker ----------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description=(
            "`redis://`, `rediss://`, or Sentinel: `redis+sentinel://[[user]:password@]h1:26379,"
            "h2:26379/SERVICE[/db][?sentinel_password=...]` (see shared/redisconn.py)."
        ),
    )
    broker_url: str | None = Field(
        None,
        description=(
            "Celery's broker; unset follows `redis_url` (a `redis+sentinel://` one becomes kombu's "
            "`sentinel://h1:26379;sentinel://h2:26379` with `master_name`). Also `amqp://`."
        ),
    )
    redis_sentinel_master: str | None = Field(
        None,
        description=(
            "Sentinel master name for a kombu `sentinel://` broker URL (unset: taken from a `redis+sentinel://` "
            "`redis_url`)."
        ),
    )
    redis_wait_replicas: int | None = Field(
        None, ge=0,
        description=(
            "Replicas that must acknowledge (Redis `WAIT`) the writes that must survive a failover (job creation, "
            "attempt count, fal request id) before falq acts on them. Unset: as many as the master has online, at most "
            "1; 0: never wait."
        ),
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1,
        description="How long such a write waits for replicas; past it falq logs a warning and goes on.",
    )
    queue_interactive: str = Field(
        "falq.interactive",
        description=(
            "Celery queue of the interactive lane (the same on every process of a key prefix: any worker may "
            "publish any of its jobs)."
        ),
    )
    queue_bulk: str = Field(
        "falq.bulk",
        description="Celery queue of the bulk lane (the same on every process of a key prefix).",
    )
    key_prefix: str = Field(
        "falq",
        description=(
            "Prefix of every Redis key falq writes: one deployment per prefix (its processes share queues, fal "
            "endpoint and limits; a second deployment on the same Redis needs a prefix of its own)."
        ),
    )

    # --- S3 ----------------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        None,
        description="Any S3-compatible endpoint (unset: AWS S3).",
    )
    s3_bucket: str = Field(
        "falq",
        description="Bucket every image is mirrored into.",
    )
    s3_prefix: str = Field(
        "falq",
        description=(
            "Object key prefix: `{prefix}/{endpoint}/{yyyy}/{mm}/{dd}/{job_id}/{index}.{ext}`; tenants other than "
            "`default` add their own prefix: `{prefix}/{tenant prefix}/{endpoint}/...`."
        ),
    )
    s3_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("FALQ_S3_REGION", "AWS_DEFAULT_REGION"),
        description="S3 region (also read from `AWS_DEFAULT_REGION`).",
    )
    s3_create_bucket: bool = Field(
        True,
        description="Create the bucket when it is missing.",
    )
    s3_addressing_style: str = Field(
        "auto",
        description="boto3 addressing style: `auto`, `path` (most S3-compatible servers) or `virtual`.",
    )
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"),
        description="S3 access key id (the standard AWS variable; unset: boto3's credential chain).",
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"),
        description="S3 secret access key (the standard AWS variable; unset: boto3's credential chain).",
    )
    aws_session_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_SESSION_TOKEN"),
        description="S3 session token (the standard AWS variable; unset: boto3's credential chain).",
    )
    presign_expiry_s: int = Field(
        3600,
        description="Lifetime of presigned GET URLs of mirrored images (seconds).",
    )
    console_session_ttl_s: int = Field(
        8 * 3600, ge=60, le=30 * 24 * 3600,
        description="Web console (`/ui`): how long a signed-in session lasts (seconds; the cookie expires with it).",
    )
    console_thumb_px: int = Field(
        384, ge=64, le=1024,
        description="Web console: the longest side of gallery thumbnails, made once per image and cached in S3.",
    )
    mirror_memory_bytes: int = Field(
        2 * 1024 * 1024,
        description="Objects this size or smaller are buffered in memory while mirrored; larger spill to disk.",
    )

    # --- jobs & workers ----------------------------------------------------------------
    tenant: str = Field(
        "default",
        description=(
            "The tenant (`falq.shared.tenants.store`) a Python/CLI producer enqueues for when it names none "
            "(`Falq(tenant=...)` and `--tenant` override it); checked at enqueue."
        ),
    )
    max_num_images: int = Field(
        4,
        description="Per-job ceiling on `num_images` (a spend guard; fal sets none).",
    )
    price_standard: float = Field(0.035, ge=0, description=(
        "List price (USD per image) of the standard endpoints: used only while fal's pricing API "
        "(FALQ_FAL_PLATFORM_URL) cannot be read; records then say price_source=list_price_fallback."))
    price_pro: float = Field(0.075, ge=0, description=(
        "List price (USD per image) of the pro endpoints: the fallback when fal's pricing API cannot be read."))
    record_ttl_s: int = Field(
        7 * 24 * 3600,
        description=(
            "How long a finished job record stays in Redis without the catalogue (seconds; with the catalogue: "
            "`FALQ_ARCHIVED_TTL_S` once archived)."
        ),
    )
    max_attempts: int = Field(
        8,
        description="fal submissions a job may make (each submission is an attempt).",
    )
    job_deadline_s: float = Field(
        3600.0, gt=0,
        description=(
            "Upper bound on one request's life at fal, from its submission. Queue time is bounded first "
            "by FALQ_FAL_START_TIMEOUT_S (fal drops it unbilled). A running generation is never cut off "
            "and thrown away: past this bound falq asks fal to cancel it and keeps following it until fal "
            "says how it ended; an output fal still delivers is billed, so it is kept, mirrored and the job "
            "completes; a request fal stopped fails as deadline_exceeded, unbilled. Where the value comes "
            "from: fal ends a running request itself at the app's request_timeout (fal.App request_timeout, "
            "reported as error_type request_timeout) and publishes no value for these endpoints, which run "
            "for seconds; 3600 s is the hour fal keeps a finished result (its queue docs), past which an "
            "output could not be fetched anyway."
        ),
    )
    fal_after_cancel_s: float = Field(
        3600.0, gt=0,
        description=(
            "After falq asked fal to cancel a request (a user's cancel, or FALQ_JOB_DEADLINE_S), how long it "
            "keeps following the request for fal's answer. fal removes a queued request at once and signals "
            "a running one, which may stop or finish (billed); past this bound the job ends without fal's "
            "answer and its record says its cost is unknown."
        ),
    )
    fal_result_retry_s: float = Field(
        3600.0, gt=0,
        description=(
            "How long, from fal's COMPLETED, falq keeps fetching the result of a request that finished "
            "without an error while the result GET answers errors (5xx with or without x-fal-request-id, "
            "edge pages). Such a request succeeded and is billed, so it is never submitted again. fal keeps "
            "results about an hour (6 minutes at 10 KB or more with X-Fal-Store-IO: 0; 30 days with payload "
            "storage on, fal's default), so 3600 s. Past it the job fails as result_unavailable."
        ),
    )
    submit_refused_max_s: float = Field(
        900.0, gt=0,
        description=(
            "How long a job's submits may keep meeting answers that created nothing at fal (fal's nginx edge "
            "pages 502/503/504 without x-fal-request-id, 408/409/429, connections never made) before the job "
            "fails as submit_refused. Such answers are not attempts (they do not count against "
            "FALQ_MAX_ATTEMPTS); 15 minutes rides out a several-minute fal edge outage without failing jobs."
        ),
    )
    max_step_crashes: int = Field(
        5, ge=1,
        description=(
            "A job whose step raises an unexpected error this many times in a row fails as step_crashed, "
            "with the error on its record, instead of being re-published for ever."
        ),
    )
    visibility_timeout_s: int = Field(
        600,
        description="One visibility timeout for broker, result backend and our step budget (seconds).",
    )
    lease_ttl_s: float = Field(
        20.0,
        description=(
            "Seconds a worker keeps a job lease without renewing it; a dead worker's job is taken over after this long."
        ),
    )
    takeover: bool = Field(
        True,
        description=(
            "Re-publish a job as soon as its lease holder died (lease expired, never released) instead of waiting for "
            "the broker's visibility timeout. Off only to measure the difference."
        ),
    )
    worker_concurrency: int = Field(
        1000,
        description="Jobs in flight per worker process (gevent greenlets).",
    )
    retry_base_s: float = Field(
        1.0,
        description=(
            "First delay of the exponential backoff with full jitter (seconds; fal's `Retry-After` is honoured)."
        ),
    )
    retry_max_s: float = Field(
        60.0,
        description="Ceiling of the exponential backoff (seconds).",
    )
    poll_min_s: float = Field(
        0.5,
        description="Shortest status polling interval when the status stream is unavailable (seconds).",
    )
    poll_max_s: float = Field(
        5.0,
        description="Longest status polling interval when the status stream is unavailable (seconds).",
    )
    fal_webhook_url: str | None = Field(
        None,
        description=(
            "Public URL of the gateway's `/_falq/fal-webhook`: fal pushes completions there and workers wait for them "
            "instead of following each request (unset: always follow)."
        ),
    )
    fal_webhook_wait_s: float = Field(
        120.0,
        description="How long after submit a worker waits for fal's webhook before following the request.",
    )
    use_status_stream: bool = Field(
        True,
        description="Use fal's SSE status stream (falls back to polling when unavailable).",
    )
    input_upload: Literal["fal", "data-uri"] = Field(
        "fal",
        description="How local edit images reach fal: `fal` (upload to fal storage) or `data-uri`.",
    )
    callback_secret: SecretStr | None = Field(
        None,
        description=(
            "HMAC key that signs per-job callbacks and `fal_webhook` deliveries (`X-Falq-Signature`); unset: unsigned."
        ),
    )
    fal_webhook_signing_key: SecretStr | None = Field(
        None,
        description="Ed25519 private key (base64url of the 32-byte seed) the gateway's outgoing "
                    "``fal_webhook`` deliveries are signed with, the way fal signs its webhooks; its public "
                    "key is served at the gateway's ``/.well-known/jwks.json``. Unset: a key is generated on "
                    "first use and kept in Redis (``{prefix}:fal-webhook-signing-key``), shared by every "
                    "worker and gateway of the deployment.",
    )
    callback_retry_for_s: float = Field(
        7200.0, ge=0,
        description=(
            "How long a per-job callback is retried (exponential backoff with jitter) before it is marked failed; about"
            " fal's own webhook retry window. `falq callbacks redeliver` re-queues."
        ),
    )
    callback_allow_private: bool = Field(
        False,
        description="Let per-job `callback_url` targets resolve to private/loopback addresses (tests only).",
    )

    # --- global limits (one fal account, shared by every worker; see shared/limits/store.py) --
    rate_per_s: float = Field(
        10.0, ge=0,
        description="Submissions per second per fal key (0 = unlimited). Seeds `{prefix}:limits:config`.",
    )
    rate_burst: int = Field(
        1, ge=1,
        description="Token bucket burst: 1 keeps every one-second window within `rate_per_s`.",
    )
    rate_headroom: float = Field(
        0.01, ge=0, le=0.5,
        description="Tokens are paced this fraction below the rate, so the send check rarely has to wait.",
    )
    rate_strict: bool = Field(
        True,
        description=(
            "Check each POST against the log of arrivals, so no 1-second window *at fal* exceeds the rate even when "
            "workers send late. Costs about submit-RTT/1 s of throughput."
        ),
    )
    max_outstanding: int = Field(
        44, ge=0,
        description="Requests outstanding at fal per key (0 = unlimited): a little above fal's concurrency.",
    )
    max_outstanding_per_endpoint: dict[str, int] | None = Field(
        None,
        description="Optional caps per endpoint, e.g. `{\"fal-ai/qwen-image-2/pro/edit\": 4}` (JSON).",
    )
    slot_lease_s: float = Field(
        15.0, gt=0,
        description="A dead worker's slots are free again after this many seconds (renewed every third).",
    )
    budget_daily: float | None = Field(
        None, ge=0,
        description="Daily budget in USD per UTC day (unset: none). Seeds the runtime configuration.",
    )
    locked_pause_s: float = Field(
        300.0, gt=0,
        description=(
            "How long a locked answer (403 \"User is locked\") pauses all submissions of the key (renewed by each)."
        ),
    )
    pause_poll_s: float = Field(
        10.0, gt=0,
        description="How often a job paused for budget or a locked account asks again (jittered).",
    )

    # --- fair share between tenants (shared/fairshare/scheduler.py) --------------------------------
    fair_dispatch: bool = Field(
        True,
        description=(
            "Jobs wait in per-tenant ready sets and are dispatched to the broker in weighted order; `false` publishes "
            "every job at enqueue, plain FIFO (falq's behaviour before tenants)."
        ),
    )
    fair_headroom: float = Field(
        0.0, ge=0, le=10,
        description=(
            "Jobs dispatched and not yet done at fal, beyond `max_outstanding` (a fraction of it). 0: a job is "
            "dispatched the moment a slot frees, so a newly active tenant waits at most about one slot turnover; a slot"
            " idles only for the hand-off (publish, pick-up, POST: milliseconds). Raise it with several fal keys (each "
            "has its own slots) or a slow broker."
        ),
    )
    fair_wait_s: float = Field(
        1.0, gt=0,
        description=(
            "Under a rate limit, jobs dispatched but not yet admitted are capped to this many seconds of the rate (at "
            "least 2): their order decides who gets the next tokens."
        ),
    )
    fair_uncapped_room: int = Field(
        200, ge=1,
        description="The dispatch target when `max_outstanding` is 0 (unlimited).",
    )
    fair_tick_s: float = Field(
        1.0, gt=0,
        description="How often a worker runs a dispatch tick (and the recovery of dispatched-unpublished jobs).",
    )
    fair_recover_after_s: float = Field(
        10.0, gt=0,
        description=(
            "A dispatched job still unpublished after this long is published by the recovery pass (its dispatcher died "
            "between taking it from the ready set and publishing it)."
        ),
    )

    # --- Flower ------------------------------------------------------------------------
    flower_user: str = Field(
        "falq",
        description="Flower's basic-auth user.",
    )
    flower_password: SecretStr | None = Field(
        None,
        description=(
            "Flower's basic-auth password; without it `falq flower` refuses to start unless given `--unauthenticated`."
        ),
    )
    flower_max_tasks: int = Field(
        10000,
        description="Bounded in-memory task history (Flower's default of 100,000 grows without need).",
    )

    # --- metrics (``falq metrics``, ``falq top``) ---------------------------------------
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token the metrics exporter requires (also accepted as a basic-auth password).",
    )
    metrics_port: int = Field(
        9808,
        description="Port of `falq metrics`.",
    )

    # --- chains and batches (falq.shared.batches.chains, falq.shared.batches.store) -------------------
    chain_max_depth: int = Field(
        8, ge=1, le=100,
        description="Longest chain of references (a generate -> edit -> edit is depth 2).",
    )
    chain_max_children: int = Field(
        1000, ge=1,
        description="Jobs that may reference one job's outputs.",
    )
    chain_url_expiry_s: int = Field(
        24 * 3600, ge=60, le=7 * 24 * 3600,
        description=(
            "How long the presigned URLs of a parent's S3 copy, handed to a child's `image_urls`, stay valid: long "
            "enough for the child's retries and fal's queue (SigV4 allows 7 days)."
        ),
    )
    chain_sweep_s: float = Field(
        15.0, gt=0,
        description=(
            "How often one worker re-checks waiting children and half-done releases (the safety net under the "
            "end-of-job stream, e.g. after a Redis restart)."
        ),
    )
    chain_claim_idle_s: float = Field(
        10.0, gt=0,
        description=(
            "An end-of-job entry a worker read for the chains and did not acknowledge within this many seconds "
            "(it died) is taken over by another worker."
        ),
    )

    # --- the catalogue (every finished job in SQL, falq.shared.catalogue) ---------------
    catalogue: bool = Field(
        True,
        description=(
            "Archive every finished job to the SQL catalogue (and `job.json` beside its images). While on, a finished "
            "record stays in Redis (no expiry) until it is archived."
        ),
    )
    database_url: str | None = Field(
        None,
        description=(
            "`postgresql://user:pass@host/db` (production; served by psycopg 3) or `sqlite:///path`. Unset: the "
            "embedded SQLite file `{data_dir}/catalogue.sqlite3`."
        ),
    )
    data_dir: str = Field(
        "~/.local/share/falq",
        description="Where the embedded SQLite catalogue lives when `database_url` is unset.",
    )
    host_name: str | None = Field(
        None, description="The name this host registers its catalogue under in Redis (falq doctor shows it; "
        "an embedded SQLite file is identified by it and its path). Default: the machine's hostname.")
    database_auto_upgrade: Literal["sqlite", "always", "never"] = Field(
        "sqlite",
        description=(
            "Apply the catalogue's migrations when a worker or the gateway starts: `sqlite` (the embedded default "
            "upgrades itself), `always`, or `never` (run `falq db upgrade`)."
        ),
    )
    database_timeout_s: float = Field(
        10.0, gt=0,
        description="Connect and statement timeout of catalogue queries (an outage never hangs a worker).",
    )
    archived_ttl_s: int = Field(
        24 * 3600, ge=1,
        description="How long a finished record stays in Redis once it is in the catalogue (the live copy).",
    )
    archive_batch: int = Field(
        200, ge=1, le=10_000,
        description="Jobs archived per database transaction.",
    )
    archive_claim_idle_s: float = Field(
        30.0, gt=0,
        description="A pending archive entry idle this long (its worker died mid-archive) is taken over.",
    )
    job_json: bool = Field(
        True,
        description="Write `job.json` (the catalogue row) beside each job's images in the bucket.",
    )

    # --- web console: sign-in limits and thumbnails made ahead (falq.gateway.console) ----------
    console_signin_max_per_address: int = Field(
        20, ge=1, le=100_000,
        description="Failed sign-ins allowed from one client address (IPv6: one /64) per window; then 429.",
    )
    console_signin_max_per_key: int = Field(
        10, ge=1, le=100_000,
        description="Failed sign-ins allowed with one key prefix (the key's first 16 characters) per window.",
    )
    console_signin_window_s: int = Field(
        900, ge=10, le=86_400,
        description="The window of those counts (seconds), from the first failure; Retry-After is what is left of it.",
    )
    console_thumbs_ahead_workers: int = Field(
        2, ge=0, le=16,
        description="Threads per gateway making completed jobs' thumbnails ahead of any page view (0: off).",
    )
    console_thumbs_ahead_queue: int = Field(
        500, ge=1, le=100_000,
        description="Thumbnails waiting to be made ahead at most (the oldest waiting are dropped beyond it).",
    )

    @field_validator("fal_queue_url", "fal_rest_url", "fal_platform_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.broker_url:
            self.broker_url = self.redis_url
        return self

    # --- derived -----------------------------------------------------------------------
    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    def media_host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.media_hosts.split(",") if h.strip()]

    def price_for(self, tier: str) -> float:
        return self.price_pro if tier == "pro" else self.price_standard

    def fal_key_value(self) -> str | None:
        return self.fal_key.get_secret_value() if self.fal_key else None

    def fal_admin_key_value(self) -> str | None:
        return self.fal_admin_key.get_secret_value() if self.fal_admin_key else None

    def key_suffix(self) -> str:
        """The last 4 characters of the fal key: enough to tell keys apart, never the key."""
        key = self.fal_key_value()
        return f"...{key[-4:]}" if key and len(key) > 8 else "(unset)" if not key else "...(short)"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, URL passwords included (for logs and CLIs)."""
        data = self.model_dump(mode="json")
        for name in ("redis_url", "broker_url", "database_url"):
            if isinstance(data.get(name), str):
                data[name] = mask_url_password(data[name])
        return data


def mask_url_password(url: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:****@host/0`` (and a Sentinel URL's
    ``sentinel_password=`` parameter likewise)."""
    if "sentinel_password=" in url:
        url = re.sub(r"(sentinel_password=)[^&]*", r"\1****", url)
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between runs)."""
    get_settings.cache_clear()
