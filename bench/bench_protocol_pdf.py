"""Benchmark: the printable (PDF) protocol of a session with 1,000 conflicts, against its HTML rendering.

    .venv/bin/python bench/bench_protocol_pdf.py                 # 10,000 changes, 1,000 conflicts
    .venv/bin/python bench/bench_protocol_pdf.py --quick         # 2,000 changes, 200 conflicts
    .venv/bin/python bench/bench_protocol_pdf.py --repeat 5 --keep /tmp/protocol.pdf
    .venv/bin/python bench/bench_protocol_pdf.py --weasyprint       # and WeasyPrint on the HTML, once

The session is `bench_sync.py`'s: a SQLite master with one table, a replica whose 10,000 local changes
(60% updates, 25% inserts, 15% deletes) meet 1,000 keys whose `note` the master changed too; `newest_wins`
decides those conflicts. The PDF is written on demand (`sync-pipeline protocol --format pdf`, the
Dagster asset `sync_protocol_pdf`): the target figure is the CLI in a fresh process (imports, reading
the protocol from the master, the PDF), ≤ 3 s. The baseline, from the same run, is rendering the same
protocol as HTML (what the sync's own run writes); `--weasyprint` also times the former renderer once.
Every figure is the median of --repeat runs; wall-clock seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sync import Master, apply_local, build_master, item_table, median, plan_changes, timed  # noqa: E402

from sync_pipeline.engine.checkout import checkout  # noqa: E402
from sync_pipeline.engine.protocol import Protocol, build_protocol  # noqa: E402
from sync_pipeline.engine.session import run_sync  # noqa: E402
from sync_pipeline.reports import render_html, render_pdf  # noqa: E402

TARGET_SECONDS = 3.0


def change_on_the_master(master: Master, keys: list[int]) -> None:
    """The master changes the field the replica changed too (`note`): every such key is a conflict."""
    item = item_table(sa.MetaData())
    with master.engine.begin() as conn:
        conn.execute(
            sa.update(item).where(item.c.id == sa.bindparam("k")).values(note=sa.bindparam("n")),
            [{"k": key, "n": f"master {key}"} for key in keys],
        )


def conflicted_session(folder: Path, rows: int, changes: int) -> tuple[Master, str]:
    """A SQLite master and the id of a finished session with `changes` local changes, 10% of them conflicts."""
    master = build_master(rows, use_sqlite=True, folder=folder)
    replica = folder / "replica.db"
    checkout(master.engine, replica, "bench")
    plan = plan_changes(rows, changes)
    apply_local(replica, plan)
    change_on_the_master(master, plan.master_touched)
    result = run_sync(master.engine, replica)
    if result.status != "done" or not result.session_id:
        raise RuntimeError(f"the bench session ended {result.status}")
    return master, result.session_id


def pdf_pages(pdf: bytes) -> int:
    from io import BytesIO

    from pypdf import PdfReader

    return len(PdfReader(BytesIO(pdf)).pages)


def cli_protocol(url: str, session_id: str, target: Path) -> tuple[float, float]:
    """`sync-pipeline protocol --format pdf` in a fresh process (imports, reading the master, the PDF):
    wall-clock and CPU seconds (the child's user + system time)."""
    command = [sys.executable, "-m", "sync_pipeline.cli", "protocol", "--master", url, "--session", session_id]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([*command, "--format", "pdf", "--out", str(target)], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def weasyprint_pdf(protocol: Protocol) -> tuple[float, float]:
    """The former renderer, for the record: WeasyPrint printing the HTML rendering (if installed);
    wall-clock and CPU seconds."""
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    HTML(string="<p>warm</p>").write_pdf()
    start, cpu = time.perf_counter(), time.process_time()
    HTML(string=render_html(protocol)).write_pdf()
    return time.perf_counter() - start, time.process_time() - cpu


@dataclass
class Figures:
    conflicts: int
    pages: int
    build: list[float] = field(default_factory=list)
    html: list[float] = field(default_factory=list)
    pdf: list[float] = field(default_factory=list)
    pdf_cpu: list[float] = field(default_factory=list)  # on a busy machine, less noisy than the wall clock
    cli: list[float] = field(default_factory=list)
    cli_cpu: list[float] = field(default_factory=list)
    weasyprint: tuple[float, float] | None = None


def measure(folder: Path, rows: int, changes: int, repeat: int, weasyprint: bool) -> tuple[Figures, bytes]:
    master, session_id = conflicted_session(folder, rows, changes)
    try:
        protocol: Protocol = build_protocol(master.engine, session_id)
        document = render_pdf(protocol)  # the first call pays the imports and the fonts: once per process
        figures = Figures(len(protocol.conflicts), pdf_pages(document))
        for _ in range(repeat):
            figures.build.append(timed(lambda: build_protocol(master.engine, session_id)))
            figures.html.append(timed(lambda: render_html(protocol)))
            start, cpu = time.perf_counter(), time.process_time()
            document = render_pdf(protocol)
            figures.pdf.append(time.perf_counter() - start)
            figures.pdf_cpu.append(time.process_time() - cpu)
            wall, cpu = cli_protocol(master.url, session_id, folder / "cli.pdf")
            figures.cli.append(wall)
            figures.cli_cpu.append(cpu)
        figures.weasyprint = weasyprint_pdf(protocol) if weasyprint else None
    finally:
        master.drop()
    return figures, document


def report(f: Figures, changes: int, repeat: int) -> None:
    def row(figure: str, wall: float, cpu: float | None, ratio: str) -> None:
        print(f"| {figure} | {wall:.3f} | {'—' if cpu is None else f'{cpu:.2f}'} | {ratio} |")

    pdf = median(f.pdf)
    print(
        f"\n### PDF protocol of {f.conflicts:,} conflicts ({changes:,} changes, {f.pages} pages), median of {repeat}\n"
    )
    print("| figure | wall-clock s | CPU s | ratio (wall-clock) |")
    print("|---|---|---|---|")
    row("render HTML (baseline)", median(f.html), None, "1 ×")
    row("render PDF", pdf, median(f.pdf_cpu), f"{pdf / median(f.html):.1f} × the HTML")
    if f.weasyprint:
        row("WeasyPrint printing the HTML (before; once)", *f.weasyprint, f"{f.weasyprint[0] / pdf:.1f} × the PDF")
    row("read the protocol from the master (`build_protocol`)", median(f.build), None, "—")
    row("on demand: `sync-pipeline protocol --format pdf`, new process", median(f.cli), median(f.cli_cpu), "—")
    met = "met" if median(f.cli) <= TARGET_SECONDS else "not met"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ntarget: on demand ≤ {TARGET_SECONDS:.0f} s (wall-clock): {met}; load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 changes (200 conflicts)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the last PDF here")
    parser.add_argument("--weasyprint", action="store_true", help="also time WeasyPrint on the HTML, once")
    args = parser.parse_args()
    rows, changes = (20_000, 2_000) if args.quick else (100_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="sync-bench-pdf-") as tmp:
        figures, document = measure(Path(tmp), rows, changes, args.repeat, args.weasyprint)
    if args.keep:
        args.keep.write_bytes(document)
    report(figures, changes, args.repeat)


if __name__ == "__main__":
    main()
