"""s3mount: mount your own S3-compatible bucket as an ordinary directory."""

__version__ = "0.1.0"
