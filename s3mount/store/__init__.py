"""The object store: buckets, keys, ETags and HTTP. Never imports pyfuse3."""
