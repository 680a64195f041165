"""The filesystem: a thin pyfuse3 adapter (fuse_ops) over a FUSE-agnostic core. Never imports boto3."""
