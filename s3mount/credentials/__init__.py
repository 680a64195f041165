"""Where S3 keys come from and how they stay fresh; knows nothing of files."""
