"""falq's shared package: settings, schemas, errors, job records, the fal client and storage."""
