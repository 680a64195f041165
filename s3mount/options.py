"""Mount options: the one table every front end (CLI ``-o``, mount(8), fstab, systemd) reads.

``OPTIONS`` lists each of our options with its type and meaning; the man pages document exactly
this table (a test compares them). Options that mount(8) and systemd pass along but that mean
nothing to us are accepted and ignored; anything else is refused with one clear line, so a typo in
fstab fails loudly instead of being silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from .errors import S3MountError


class OptionError(S3MountError):
    """A bad ``-o`` option; the message names it."""


@dataclass(frozen=True)
class Option:
    kind: type  # bool, int, float, str, or "mode" (octal) as int with octal parsing
    help: str
    octal: bool = False


OPTIONS: dict[str, Option] = {
    "ro": Option(bool, "mount read-only: writes fail with EROFS (also: --read-only)"),
    "rw": Option(bool, "mount read-write (the default)"),
    "uid": Option(int, "owner of files without x-amz-meta-uid (default: the mounting user)"),
    "gid": Option(int, "group of files without x-amz-meta-gid (default: the mounting user's group)"),
    "file_mode": Option(int, "permission bits of files without x-amz-meta-mode (default 0644)",
                        octal=True),
    "dir_mode": Option(int, "permission bits of directories without x-amz-meta-mode "
                            "(default 0755)", octal=True),
    "umask": Option(int, "umask applied to file_mode and dir_mode defaults", octal=True),
    "allow_other": Option(bool, "let other users access the mount (needs user_allow_other in "
                                "/etc/fuse.conf for non-root)"),
    "default_permissions": Option(bool, "let the kernel check permissions (always on)"),
    "nonempty": Option(bool, "mount over a directory that is not empty (its files are hidden "
                             "until the unmount); refused without it"),
    "cache_dir": Option(str, "directory for staging files and the attribute cache "
                             "(default ${XDG_CACHE_HOME:-~/.cache}/s3mount)"),
    "cache_size": Option(int, "MiB of written data staged in cache_dir at once; over it, "
                              "writers wait for uploads to free space, and a file written front "
                              "to back keeps only its parts not yet stored (default 4096)"),
    "attr_timeout": Option(float, "seconds attributes (and the content of a small file its "
                                  "lookup fetched) are trusted before asking S3 again "
                                  "(default 1)"),
    "dir_timeout": Option(float, "seconds a directory listing is trusted (default 1)"),
    "neg_timeout": Option(float, "seconds a missing name is remembered as missing (default 1)"),
    "async_upload": Option(bool, "close() returns before the upload; uploads run in the "
                                 "background and survive a crash in cache_dir"),
    "no_posix_metadata": Option(bool, "serve attributes from listings only (no HEAD per file); "
                                      "chmod/chown/utimens still write metadata"),
    "no_shared_index": Option(bool, "neither read nor write the shared attribute index "
                                    "(.s3mount/index/ in the bucket), which lets other mounts "
                                    "show ls -l without a HEAD per file"),
    "no_xattr": Option(bool, "no extended attributes (they fail with ENOTSUP): the kernel stops "
                             "asking, so ls -l costs two FUSE requests less per file and each "
                             "write one less"),
    "endpoint_url": Option(str, "S3 endpoint URL (default: from the profile or AWS config)"),
    "region": Option(str, "S3 signing region (default us-east-1)"),
    "profile": Option(str, "s3mount profile (config.toml) to take credentials and bucket from; "
                           "not s3fs's profile=, which is aws_profile= here"),
    "aws_profile": Option(str, "AWS profile of ~/.aws/config and ~/.aws/credentials for the "
                               "keys (as AWS_PROFILE; s3fs calls this profile=)"),
    "no_verify_ssl": Option(bool, "do not verify the server's TLS certificate (insecure; warns)"),
    "timeout": Option(float, "seconds from an operation's start until a request that gets no "
                             "answer fails with EIO, retries included (default 60)"),
    "addressing_style": Option(str, "how requests name the bucket: path (host/bucket/key), "
                                    "virtual (bucket.host/key) or auto: virtual where the bucket "
                                    "name is a DNS label and the endpoint no IP address "
                                    "(default auto, as in botocore)"),
    "part_size": Option(int, "multipart part size in MiB (default 8)"),
    "max_uploads": Option(int, "parallel part transfers per file (default 8)"),
    "buffer_size": Option(int, "MiB of file data held in memory for transfers, shared by all "
                               "open files: a third for read-ahead, the rest for parts being "
                               "uploaded; more files at once then each read ahead less, and "
                               "writers wait (default 384)"),
    "debug": Option(bool, "log at debug level (secrets are never logged)"),
    "log_file": Option(str, "log file when running in the background "
                            "(default ${XDG_STATE_HOME:-~/.local/state}/s3mount/<mount>.log)"),
    "log_size": Option(float, "MiB the log file may grow to before it is rotated; 3 older files "
                              "are kept (default 10; 0: never rotate)"),
}

# Accepted for mount(8)/fstab/systemd compatibility and ignored.
IGNORED = frozenset({
    "defaults", "user", "users", "nouser", "owner", "group", "auto", "noauto", "_netdev", "nofail",
    "nosuid", "suid", "nodev", "dev", "exec", "noexec", "atime", "noatime", "relatime",
    "norelatime", "strictatime", "lazytime", "nodiratime", "diratime", "sync", "async", "dirsync",
    "loud", "silent", "comment", "helper",
})
IGNORED_PREFIXES = ("x-systemd.", "x-gvfs-", "x-", "comment=")

MAX_ID = 2**32 - 1
MAX_LOG_SIZE = 1024 * 1024  # MiB: 1 TiB

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class MountOptions:
    """Parsed ``-o`` options with their defaults. Field names equal option names."""

    ro: bool = False
    rw: bool = False
    uid: int | None = None
    gid: int | None = None
    file_mode: int = 0o644
    dir_mode: int = 0o755
    umask: int | None = None
    allow_other: bool = False
    default_permissions: bool = True
    nonempty: bool = False
    cache_dir: str | None = None
    cache_size: int = 4096
    attr_timeout: float = 1.0
    dir_timeout: float = 1.0
    neg_timeout: float = 1.0
    async_upload: bool = False
    no_posix_metadata: bool = False
    no_shared_index: bool = False
    no_xattr: bool = False
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    aws_profile: str | None = None
    no_verify_ssl: bool = False
    timeout: float = 60.0
    addressing_style: str = "auto"
    part_size: int = 8
    max_uploads: int = 8
    buffer_size: int = 384
    debug: bool = False
    log_file: str | None = None
    log_size: float = 10.0
    ignored: list[str] = field(default_factory=list)


def split_options(values: list[str] | None) -> list[str]:
    """``["a,b=1", "c"]`` -> ``["a", "b=1", "c"]`` (repeated ``-o`` and comma lists both work).

    A control character (newline, NUL, ...) is refused in any option, even one we would ignore:
    no fstab line or command line has one by accident, and a consumer that splits on it could
    read a second option (``x-foo=1\nallow_other``) that this parser never saw.
    """
    out: list[str] = []
    for v in values or []:
        if _CONTROL_RE.search(v):
            raise OptionError(f"mount options must not contain control characters: {v!r}")
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def parse_options(values: list[str] | None) -> MountOptions:
    """Parse ``-o`` values; raise OptionError with one clear line on anything we cannot use."""
    opts = MountOptions()
    known = {f.name for f in fields(MountOptions)}
    for item in split_options(values):
        name, eq, value = item.partition("=")
        if name in IGNORED or item.startswith(IGNORED_PREFIXES) or name.startswith("x-"):
            opts.ignored.append(item)
            continue
        spec = OPTIONS.get(name)
        if spec is None or name not in known or not _NAME_RE.match(name):
            raise OptionError(f"unknown mount option {name!r}")
        if spec.kind is bool:
            if eq:
                raise OptionError(f"option {name!r} takes no value")
            setattr(opts, name, True)
            continue
        if not eq or value == "":
            raise OptionError(f"option {name!r} needs a value ({name}=...)")
        try:
            parsed: object
            if spec.kind is int:
                parsed = int(value, 8) if spec.octal else int(value, 10)
                if parsed < 0:  # type: ignore[operator]
                    raise ValueError
            elif spec.kind is float:
                parsed = float(value)
                if not parsed >= 0:  # also rejects NaN
                    raise ValueError
            else:
                if "\n" in value or "\0" in value:
                    raise ValueError
                parsed = value
        except ValueError:
            kind = "octal number" if spec.octal else spec.kind.__name__
            raise OptionError(f"option {name!r}: {value!r} is not a valid {kind}") from None
        setattr(opts, name, parsed)
    if opts.ro and opts.rw:
        raise OptionError("options 'ro' and 'rw' contradict each other")
    for id_opt in ("uid", "gid"):
        # A file's owner is a 32-bit uid_t, and (uid_t)-1 means "no owner" to chown(2): a
        # larger one fails every stat on the mount (EIO) once it is mounted.
        if (v := getattr(opts, id_opt)) is not None and v >= MAX_ID:
            raise OptionError(f"option {id_opt!r}: {v} is not a user or group id "
                              f"(0 to {MAX_ID - 1})")
    if opts.log_size > MAX_LOG_SIZE:  # the handler counts bytes in an int: inf would not do
        raise OptionError(f"option 'log_size' must be at most {MAX_LOG_SIZE} (MiB)")
    for mode_opt in ("file_mode", "dir_mode", "umask"):
        v = getattr(opts, mode_opt)
        if v is not None and v > 0o7777:
            raise OptionError(f"option {mode_opt!r}: {oct(v)} is not a permission mode")
    if opts.umask is not None:
        opts.file_mode &= ~opts.umask & 0o7777
        opts.dir_mode &= ~opts.umask & 0o7777
    if opts.part_size < 5 or opts.part_size > 5120:
        raise OptionError("option 'part_size' must be between 5 and 5120 MiB")
    if opts.max_uploads < 1 or opts.max_uploads > 64:
        raise OptionError("option 'max_uploads' must be between 1 and 64")
    if not 0 < opts.timeout < 1e6:  # inf, and 0 (which would fail every request at once)
        raise OptionError("option 'timeout' must be a number of seconds above 0")
    if opts.addressing_style not in ("auto", "path", "virtual"):
        raise OptionError("option 'addressing_style' must be path, virtual or auto")
    if opts.buffer_size < 3:
        raise OptionError("option 'buffer_size' must be at least 3 (MiB)")
    if opts.endpoint_url is not None:
        check_endpoint_url(opts.endpoint_url)
    return opts


def check_endpoint_url(url: str) -> str:
    """``url`` if botocore can use it as an endpoint, else an OptionError saying what is wrong.

    botocore only fails on a bad endpoint when the first request is made, in the mount process,
    with a traceback; checked here, every front end (CLI, mount(8), profiles) refuses it before
    any process starts, in one line.
    """
    example = "a valid one looks like https://s3.example.com or http://127.0.0.1:9000"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        what = "the port is not a number from 1 to 65535" if "Port" in str(exc) else str(exc)
        raise OptionError(f"bad endpoint URL {url!r}: {what}; {example}") from None
    if parts.scheme not in ("http", "https"):
        what = (f"scheme {parts.scheme!r} is not http or https" if parts.scheme and parts.netloc
                else "it has no http:// or https:// in front")
        raise OptionError(f"bad endpoint URL {url!r}: {what}; {example}")
    if _CONTROL_RE.search(url) or " " in url:
        raise OptionError(f"bad endpoint URL {url!r}: it contains a space or control character; "
                          f"{example}")
    if not parts.hostname:
        raise OptionError(f"bad endpoint URL {url!r}: it names no host; {example}")
    if port == 0:
        raise OptionError(f"bad endpoint URL {url!r}: the port is not a number from 1 to 65535; "
                          f"{example}")
    if parts.query or parts.fragment:
        raise OptionError(f"bad endpoint URL {url!r}: it must not have a query or fragment; "
                          f"{example}")
    return url
