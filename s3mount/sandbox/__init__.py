"""Local stand-ins for everything s3mount talks to: an S3 server and each provider's API.

Used by the tests and by ``s3mount demo``; nothing outside this package imports it.
"""
