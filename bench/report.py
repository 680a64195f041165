"""Turning per-run measurements into the Markdown tables of the benchmark report.

Three tables: medians per contender, ratios against s3mount (other's time / s3mount's time, so > 1
means s3mount is faster; on the sequential rows the boto3 column is therefore s3mount's throughput as a
fraction of boto3's), and the targets of issue #7 with a pass/fail mark.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

MIB = 1 << 20
REFERENCE = "s3mount"


@dataclass
class Results:
    """Measurements of one benchmark run: ``values[contender][test]`` holds one number per run."""

    contenders: list[str]
    tests: dict[str, frozenset[str]]
    """Which tests each contender runs (others show n/a)."""
    skipped: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add(self, contender: str, test: str, value: float) -> None:
        self.values.setdefault(contender, {}).setdefault(test, []).append(value)

    def fail(self, contender: str, test: str, why: str) -> None:
        self.errors.setdefault(contender, {}).setdefault(test, []).append(why)

    def median(self, contender: str, test: str) -> float | None:
        v = self.values.get(contender, {}).get(test)
        return statistics.median(v) if v else None


@dataclass(frozen=True)
class Row:
    test: str
    label: str
    bytes: int = 0
    """Bytes moved, for a throughput next to the time (0: no throughput)."""
    unit: str = "s"


def _fmt_time(v: float) -> str:
    return f"{v:.2f} s" if v < 10 else f"{v:.1f} s"


def render(results: Results, rows: list[Row], runs: int, header: list[str]) -> str:
    notes: list[str] = []
    out = [*header, ""]
    names = results.contenders
    out.append("| test | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for row in rows:
        cells = [_cell(results, c, row, runs, notes) for c in names]
        out.append(f"| {row.label} | " + " | ".join(cells) + " |")
    out.append("")
    others = [c for c in names if c != REFERENCE]
    out.append(f"Ratios: other's median / {REFERENCE}'s median (> 1: {REFERENCE} is faster or "
               "smaller; boto3 column on the sequential rows = s3mount throughput / boto3 "
               "throughput).")
    out.append("")
    out.append("| test | " + " | ".join(others) + " |")
    out.append("|---|" + "---|" * len(others))
    for row in rows:
        ref = results.median(REFERENCE, row.test)
        cells = []
        for c in others:
            v = results.median(c, row.test)
            cells.append(f"{v / ref:.2f}×" if v is not None and ref else "—")
        out.append(f"| {row.label} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Targets (issue #7):")
    out.append("")
    out.append("| target | measured | ok |")
    out.append("|---|---|---|")
    for label, value, ok in targets(results):
        mark = "?" if value is None else ("yes" if ok else "**no**")
        out.append(f"| {label} | {'—' if value is None else value} | {mark} |")
    if results.skipped or notes:
        out.append("")
        out.append("Notes:")
        out.append("")
        for c, why in results.skipped.items():
            out.append(f"- {c}: skipped: {why}")
        out.extend(notes)
    return "\n".join(out) + "\n"


def _cell(results: Results, c: str, row: Row, runs: int, notes: list[str]) -> str:
    if c in results.skipped:
        return "skipped"
    if row.test not in results.tests.get(c, frozenset()):
        return "n/a"
    vals = results.values.get(c, {}).get(row.test, [])
    errs = results.errors.get(c, {}).get(row.test, [])
    ref = ""
    if errs:
        notes.append(f"- [{len(notes) + 1}] {c}, {row.label}: " + "; ".join(dict.fromkeys(errs)))
        ref = f" [{len(notes)}]"
    if not vals:
        return f"failed{ref}"
    m = statistics.median(vals)
    if row.unit == "MiB":
        text = f"{m:.0f} MiB"
    else:
        text = _fmt_time(m)
        if row.bytes:
            text += f" ({row.bytes / MIB / m:.0f} MiB/s)"
    if len(vals) < runs:
        text += f" ({len(vals)}/{runs} ok)"
    return text + ref


def targets(r: Results) -> list[tuple[str, str | None, bool]]:
    """(what, measured, met) for each target of the issue; measured None when it could not be."""
    m = r.median
    out: list[tuple[str, str | None, bool]] = []

    def ratio(label: str, num: Callable[[], float | None], den: Callable[[], float | None],
              threshold: float, strict: bool = False) -> None:
        a, b = num(), den()
        if a is None or b is None or b == 0:
            out.append((label, None, False))
            return
        x = a / b
        out.append((label, f"{x:.2f}×", x > threshold if strict else x >= threshold))

    def both(c: str, t1: str, t2: str) -> Callable[[], float | None]:
        def f() -> float | None:
            a, b = m(c, t1), m(c, t2)
            return None if a is None or b is None else a + b
        return f

    def med(c: str, t: str) -> Callable[[], float | None]:
        return lambda: m(c, t)

    s = REFERENCE
    for t, what in (("seq_write", "sequential write"), ("seq_read", "sequential read")):
        ratio(f"{what}: s3mount throughput >= 85% of boto3", med("boto3", t), med(s, t), 0.85)
        ratio(f"{what}: faster than s3fs", med("s3fs", t), med(s, t), 1.0, strict=True)
        ratio(f"{what}: faster than rclone", med("rclone", t), med(s, t), 1.0, strict=True)
    ratio("ls -l cold: >= 2× faster than s3fs", med("s3fs", "ls_cold"), med(s, "ls_cold"), 2.0)
    ratio("ls -l cold: faster than rclone", med("rclone", "ls_cold"), med(s, "ls_cold"), 1.0,
          strict=True)
    ratio("ls -l warm (next mount): >= 10× faster than s3fs (cold; s3fs keeps no cache across "
          "mounts)", med("s3fs", "ls_cold"), med(s, "ls_warm"), 10.0)
    nm = "s3mount no_posix_metadata"
    ratio("ls -l cold with no_posix_metadata: >= 5× faster than s3fs", med("s3fs", "ls_cold"),
          med(nm, "ls_cold"), 5.0)
    ratio("small files create + read: faster than s3fs", both("s3fs", "small_create", "small_read"),
          both(s, "small_create", "small_read"), 1.0, strict=True)
    ratio("small files create with async_upload: faster than rclone",
          med("rclone", "small_create"), med("s3mount async_upload", "small_create"), 1.0,
          strict=True)
    rss = m(s, "rss")
    out.append(("peak RSS during 1 GiB copy in and out < 200 MiB",
                None if rss is None else f"{rss:.0f} MiB", rss is not None and rss < 200))
    return out
