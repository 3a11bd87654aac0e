"""fal's queue protocol served by falq, and fal-style webhooks in and out."""
