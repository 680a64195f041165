"""The test harness's own promise: a mount whose log has an internal error or a traceback the test
did not declare fails the test in teardown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mountlib import Mounter, unexpected_records

from s3mount.sandbox.client import SandboxProcess

BUG = ("2026-12-04 00:00:00,001 ERROR s3mount.fs.fuse_ops: internal error in read\n"
       "Traceback (most recent call last):\n"
       '  File "fuse_ops.py", line 36, in wrapper\n'
       "KeyError: 3\n")


def test_records_with_internal_errors_or_tracebacks() -> None:
    log = ("2026-12-04 00:00:00,000 INFO s3mount.mount: mounted\n" + BUG +
           "2026-12-04 00:00:00,002 WARNING s3mount.fs.files: upload failed; retrying\n"
           "Exception in thread worker:\nTraceback (most recent call last):\nOSError: boom\n")
    found = unexpected_records(log, [])
    assert found == [BUG.rstrip(), "2026-12-04 00:00:00,002 WARNING s3mount.fs.files: upload "
                     "failed; retrying\nException in thread worker:\nTraceback (most recent "
                     "call last):\nOSError: boom"]
    assert unexpected_records(log, [re.compile("KeyError"), re.compile("OSError")]) == []
    assert unexpected_records("Traceback (most recent call last):\nX\n", []) != []  # no header


@pytest.mark.parametrize("declared", [False, True])
def test_an_undeclared_error_in_the_log_fails_teardown(sandbox: SandboxProcess, bucket: str,
                                                       tmp_path: Path, declared: bool) -> None:
    mounter = Mounter(sandbox, tmp_path)
    try:
        m = mounter(bucket)
        (m.path / "f").write_text("x")
        with open(m.log_file, "a") as f:  # as the mount logs an exception nothing expected
            f.write(BUG)
        if declared:
            mounter.expect_log(r"internal error in read(.|\n)*KeyError")
    except BaseException:
        mounter.close()
        raise
    if declared:
        mounter.close()
    else:
        with pytest.raises(AssertionError, match="internal error in read"):
            mounter.close()
    assert not m.path.is_mount()  # unmounted all the same
