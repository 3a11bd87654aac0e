"""Fetching fal's outputs safely and mirroring them into the bucket."""
