"""S3-compatible storage and the image byte rules."""
