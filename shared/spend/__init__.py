"""What fal charges: account prices, batch spend caps, reconciling with fal's billing."""
