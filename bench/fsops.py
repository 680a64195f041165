"""File operations the benchmark times, run as a child process so every one of them has a timeout.

A read on a hung FUSE mount blocks in the kernel and cannot be interrupted from inside the process
that issued it; in a child, the parent's ``subprocess.run(timeout=...)`` kills it instead.

    python fsops.py copy SRC DST                  # 1 MiB writes, then close
    python fsops.py read FILE --verify SRC         # 1 MiB reads; spot-checks 1 MiB in 64 against SRC
    python fsops.py mkfiles DIR COUNT SIZE         # COUNT files of SIZE bytes, one after the other
    python fsops.py readfiles DIR COUNT SIZE       # reads them back and checks every byte

Each prints the number of bytes moved; a short read or a wrong byte exits 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

BLOCK = 1 << 20
VERIFY_EVERY = 64  # compare one block in this many with the source: catches wrong data, costs ~2%


def small_name(i: int) -> str:
    return f"f{i:05d}"


def small_content(i: int, size: int) -> bytes:
    """Distinct, checkable content for small file ``i``."""
    seed = f"{i:08d}".encode()
    return (seed * (size // len(seed) + 1))[:size]


def copy(src: str, dst: str) -> int:
    total = 0
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := fi.readinto(buf):
            fo.write(view[:n])
            total += n
    return total


def read(path: str, verify: str | None) -> int:
    total = 0
    ref = open(verify, "rb", buffering=0) if verify else None  # noqa: SIM115 - closed below
    try:
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(BLOCK)
            block = 0
            while n := f.readinto(buf):
                if ref is not None and block % VERIFY_EVERY == 0 and \
                        os.pread(ref.fileno(), n, total) != bytes(buf[:n]):
                    raise SystemExit(f"{path}: wrong data at offset {total}")
                total += n
                block += 1
        if ref is not None and total != os.fstat(ref.fileno()).st_size:
            raise SystemExit(f"{path}: read {total} bytes, expected "
                             f"{os.fstat(ref.fileno()).st_size}")
    finally:
        if ref is not None:
            ref.close()
    return total


def mkfiles(d: str, count: int, size: int) -> int:
    os.makedirs(d, exist_ok=True)
    for i in range(count):
        with open(os.path.join(d, small_name(i)), "wb") as f:
            f.write(small_content(i, size))
    return count * size


def readfiles(d: str, count: int, size: int) -> int:
    for i in range(count):
        with open(os.path.join(d, small_name(i)), "rb") as f:
            if f.read() != small_content(i, size):
                raise SystemExit(f"{small_name(i)}: wrong content")
    return count * size


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="op", required=True)
    p = sub.add_parser("copy")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("read")
    p.add_argument("path")
    p.add_argument("--verify")
    for op in ("mkfiles", "readfiles"):
        p = sub.add_parser(op)
        p.add_argument("dir")
        p.add_argument("count", type=int)
        p.add_argument("size", type=int)
    a = ap.parse_args()
    if a.op == "copy":
        n = copy(a.src, a.dst)
    elif a.op == "read":
        n = read(a.path, a.verify)
    elif a.op == "mkfiles":
        n = mkfiles(a.dir, a.count, a.size)
    else:
        n = readfiles(a.dir, a.count, a.size)
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
