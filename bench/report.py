"""Turning per-run measurements into the Markdown tables of the benchmark report.

Three tables: medians per contender, ratios against s3mount (other's time / s3mount's time, so > 1
means s3mount is faster; on the sequential rows the boto3 column is therefore s3mount's throughput as a
fraction of boto3's), and the targets of issues #7 and #19 with a pass/fail mark. When boto3 and
s3mount ran the sequential rows in alternating pairs, their ratio is the median of the pairwise
ratios (each pair ran back to back, so a machine that slows down during the run moves both numbers
of a pair, not the ratio), and a fourth table lists the pairs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

MIB = 1 << 20
REFERENCE = "s3mount"
PAIRED_WITH = "boto3"


@dataclass
class Results:
    """Measurements of one benchmark run: ``values[contender][test]`` holds one number per run."""

    contenders: list[str]
    tests: dict[str, frozenset[str]]
    """Which tests each contender runs (others show n/a)."""
    skipped: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    pairs: int = 0
    """How many boto3/s3mount pairs ran the tests in ``paired_tests`` (0: none did)."""
    paired_tests: frozenset[str] = frozenset()
    paired: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    """``paired[test][pair][contender]``: the value each contender measured in that pair."""

    def add(self, contender: str, test: str, value: float, pair: int | None = None) -> None:
        self.values.setdefault(contender, {}).setdefault(test, []).append(value)
        if pair is not None and test in self.paired_tests:
            self.paired.setdefault(test, {}).setdefault(pair, {})[contender] = value

    def expected(self, contender: str, test: str, runs: int) -> int:
        """How many values ``contender`` should have for ``test``."""
        if self.pairs and test in self.paired_tests and contender in (PAIRED_WITH, REFERENCE):
            return self.pairs
        return runs

    def pair_ratios(self, test: str) -> list[float]:
        """boto3's time / s3mount's time for each pair where both succeeded."""
        return [p[PAIRED_WITH] / p[REFERENCE] for _, p in sorted(self.paired.get(test, {}).items())
                if p.get(PAIRED_WITH) and p.get(REFERENCE)]

    def ratio_to_reference(self, contender: str, test: str) -> float | None:
        """Other's time / s3mount's time: the median of pairwise ratios where there are pairs."""
        if contender == PAIRED_WITH and (pr := self.pair_ratios(test)):
            return statistics.median(pr)
        v, ref = self.median(contender, test), self.median(REFERENCE, test)
        return v / ref if v is not None and ref else None

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


def render(results: Results, rows: list[Row], runs: int, header: list[str],
           rtt_ms: float = 0.0) -> str:
    notes: list[str] = []
    out = [*header, ""]
    names = results.contenders
    where = f"RTT {rtt_ms:g} ms" if rtt_ms else "loopback"
    out.append(f"| test ({where}) | " + " | ".join(names) + " |")
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
        cells = []
        for c in others:
            x = results.ratio_to_reference(c, row.test)
            paired = c == PAIRED_WITH and results.pair_ratios(row.test)
            cells.append("—" if x is None else f"{x:.2f}×" + (" (pairs)" if paired else ""))
        out.append(f"| {row.label} | " + " | ".join(cells) + " |")
    out.extend(_pairs_table(results, rows))
    out.append("")
    out.append(f"Targets (issues #7 and #19; {where}; those this run measured):")
    out.append("")
    out.append("| target | measured | ok |")
    out.append("|---|---|---|")
    measured = [(label, value, ok) for label, value, ok in targets(results, rtt_ms)
                if value is not None]
    for label, value, ok in measured:
        out.append(f"| {label} | {value} | {'yes' if ok else '**no**'} |")
    if not measured:
        out.append("| (none: this run lacks the numbers any target compares) | — | — |")
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
    runs = results.expected(c, row.test, runs)
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


def _pairs_table(results: Results, rows: list[Row]) -> list[str]:
    """Each pair's times and ratio (boto3's time / s3mount's, i.e. s3mount's share of boto3's
    throughput), in the order they ran."""
    tests = [r for r in rows if r.test in results.paired]
    if not tests:
        return []
    out = ["", f"Sequential rows in {results.pairs} alternating pairs (odd pairs boto3 first, even "
           "pairs s3mount first); ratio = boto3's time / s3mount's time:", "",
           "| pair | " + " | ".join(f"{r.label}: boto3 / s3mount / ratio" for r in tests) + " |",
           "|---|" + "---|" * len(tests)]
    for i in range(results.pairs):
        cells = []
        for r in tests:
            p = results.paired[r.test].get(i, {})
            a, b = p.get(PAIRED_WITH), p.get(REFERENCE)
            cells.append(" / ".join(_fmt_time(v) if v else "failed" for v in (a, b))
                         + (f" / {a / b:.2f}×" if a and b else ""))
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    med = [f"{statistics.median(pr):.2f}×" if (pr := results.pair_ratios(r.test)) else "—"
           for r in tests]
    out.append("| median of the ratios | " + " | ".join(med) + " |")
    return out


def targets(r: Results, rtt_ms: float = 0.0) -> list[tuple[str, str | None, bool]]:
    """(what, measured, met) for each target of the issues; measured None when it could not be.

    On loopback (``rtt_ms`` 0) the targets of issue #7 and the loopback one of issue #19; through
    the latency proxy those of issue #19 for that profile (its numbers are for an RTT of 20 ms).
    """
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

    def paired(label: str, test: str, threshold: float) -> None:
        pr = r.pair_ratios(test)
        if not pr:
            ratio(label, med("boto3", test), med(s, test), threshold)
            return
        x = statistics.median(pr)
        out.append((f"{label} (median of {len(pr)} pairwise ratios)", f"{x:.2f}×",
                    x >= threshold))

    s = REFERENCE
    if rtt_ms:
        ratio(f"ls -l cold at RTT {rtt_ms:g} ms: >= 2× faster than s3fs (#19)",
              med("s3fs", "ls_cold"), med(s, "ls_cold"), 2.0)
        ratio(f"ls -l cold at RTT {rtt_ms:g} ms: faster than rclone (#19)",
              med("rclone", "ls_cold"), med(s, "ls_cold"), 1.0, strict=True)
        ratio("ls -l second machine: >= 10× faster than s3fs (cold) (#19)",
              med("s3fs", "ls_cold"), med(s, "ls_fresh"), 10.0)
        ratio("ls -l warm (next mount): >= 10× faster than s3fs (cold)",
              med("s3fs", "ls_cold"), med(s, "ls_warm"), 10.0)
        ratio("small files create + read: faster than s3fs",
              both("s3fs", "small_create", "small_read"),
              both(s, "small_create", "small_read"), 1.0, strict=True)
        return out
    for t, what in (("seq_write", "sequential write"), ("seq_read", "sequential read")):
        paired(f"{what}: s3mount throughput >= 85% of boto3", t, 0.85)
        ratio(f"{what}: faster than s3fs", med("s3fs", t), med(s, t), 1.0, strict=True)
        ratio(f"{what}: faster than rclone", med("rclone", t), med(s, t), 1.0, strict=True)
    ratio("ls -l cold: >= 2× faster than s3fs", med("s3fs", "ls_cold"), med(s, "ls_cold"), 2.0)
    ratio("ls -l cold: >= 1.0× s3fs (#19, loopback)", med("s3fs", "ls_cold"), med(s, "ls_cold"),
          1.0)
    ratio("ls -l cold: faster than rclone", med("rclone", "ls_cold"), med(s, "ls_cold"), 1.0,
          strict=True)
    ratio("ls -l second machine: >= 10× faster than s3fs (cold) (#19)", med("s3fs", "ls_cold"),
          med(s, "ls_fresh"), 10.0)
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
