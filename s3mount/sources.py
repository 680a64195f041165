"""What may be mounted: ``s3://bucket[/prefix]`` or a profile name, validated in one place.

The source ends up in the FUSE ``fsname=`` option and in mount(8)'s view of the mount, so it is held
to a strict alphabet: S3 bucket-name rules, a prefix of printable ASCII without ``,`` or ``\\``, and
profile names of letters, digits, ``_``, ``.`` and ``-``. Nothing a user types as a source can add
an option to a FUSE or mount command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import S3MountError

_S3_SOURCE = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(?P<prefix>.*))?")
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SourceError(S3MountError):
    """A source that is neither a valid ``s3://`` URL nor a profile name."""


@dataclass(frozen=True)
class Source:
    bucket: str | None
    prefix: str
    profile: str | None


def parse_source(source: str) -> Source:
    m = _S3_SOURCE.fullmatch(source)
    if m:
        prefix = m.group("prefix") or ""
        if all("!" <= c <= "~" and c not in ",\\" for c in prefix):
            return Source(m.group("bucket"), prefix.strip("/"), None)
    elif _PROFILE.fullmatch(source):
        return Source(None, "", source)
    raise SourceError(f"bad source {source!r}: expected s3://BUCKET[/PREFIX] (a valid bucket name; "
                      "no spaces, commas or backslashes) or a profile name (letters, digits, "
                      "'.', '_', '-')")
