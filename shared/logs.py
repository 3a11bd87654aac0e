"""Logging setup with secret redaction.

falq never formats a secret into a message on purpose; this filter is the second line of
defence: any log record whose text contains the fal key, an AWS secret, a configured
password or token, or the password of the Redis/broker URL has it replaced by
``[REDACTED]`` before a handler sees it.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

from falq.shared.settings import Settings


class RedactSecrets(logging.Filter):
    """Masks the given secret values in every record passing through a handler."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        if any(s in msg for s in self.secrets):
            for s in self.secrets:
                msg = msg.replace(s, "[REDACTED]")
            record.msg, record.args = msg, ()
        if record.exc_text and any(s in record.exc_text for s in self.secrets):
            for s in self.secrets:
                record.exc_text = record.exc_text.replace(s, "[REDACTED]")
        return True


def secret_values(settings: Settings) -> list[str]:
    """Every secret value falq knows: keys, tokens, passwords, and passwords inside URLs."""
    values = []
    for name in ("fal_key", "aws_secret_access_key", "aws_session_token", "callback_secret", "flower_password",
                 "metrics_token"):
        secret = getattr(settings, name, None)
        if secret is not None:
            values.append(secret.get_secret_value())
    for url in (settings.redis_url, settings.broker_url or ""):
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            values.append(unquote(password))
        # A Sentinel URL's sentinels' own password (shared.redisconn).
        values += [unquote(v) for k, _, v in (p.partition("=") for p in url.partition("?")[2].split("&"))
                   if k == "sentinel_password" and v]
    return values


def setup_logging(level: str, settings: Settings) -> None:
    """Configure the root logger once, with the redaction filter on its handler."""
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    for handler in root.handlers:
        handler.addFilter(RedactSecrets(secret_values(settings)))
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
