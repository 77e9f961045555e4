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
import subprocess
import sys
import tempfile
import time
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


def cli_protocol(url: str, session_id: str, target: Path) -> float:
    """`sync-pipeline protocol --format pdf` in a fresh process: imports, reading the master, the PDF."""
    command = [sys.executable, "-m", "sync_pipeline.cli", "protocol", "--master", url, "--session", session_id]
    start = time.perf_counter()
    subprocess.run([*command, "--format", "pdf", "--out", str(target)], check=True, capture_output=True)
    return time.perf_counter() - start


def weasyprint_pdf(protocol: Protocol) -> float:
    """The former renderer, for the record: WeasyPrint printing the HTML rendering (if installed)."""
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    HTML(string="<p>warm</p>").write_pdf()
    return timed(lambda: HTML(string=render_html(protocol)).write_pdf())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 changes (200 conflicts)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the last PDF here")
    parser.add_argument("--weasyprint", action="store_true", help="also time WeasyPrint on the HTML, once")
    args = parser.parse_args()
    rows, changes = (20_000, 2_000) if args.quick else (100_000, 10_000)

    with tempfile.TemporaryDirectory(prefix="sync-bench-pdf-") as tmp:
        master, session_id = conflicted_session(Path(tmp), rows, changes)
        try:
            protocol: Protocol = build_protocol(master.engine, session_id)
            conflicts = len(protocol.conflicts)
            render_pdf(protocol)  # the first call pays the imports and font loading: a process pays it once
            built, html, pdf, pdf_cpu, cli = [], [], [], [], []
            document = b""
            for _ in range(args.repeat):
                built.append(timed(lambda: build_protocol(master.engine, session_id)))
                html.append(timed(lambda: render_html(protocol)))
                start, cpu = time.perf_counter(), time.process_time()
                document = render_pdf(protocol)
                pdf.append(time.perf_counter() - start)
                pdf_cpu.append(time.process_time() - cpu)  # on a busy machine, less noisy than the wall clock
                cli.append(cli_protocol(master.url, session_id, Path(tmp) / "cli.pdf"))
            before = weasyprint_pdf(protocol) if args.weasyprint else None
        finally:
            master.drop()
    if args.keep:
        args.keep.write_bytes(document)
    pages = pdf_pages(document)
    met = "yes" if median(cli) <= TARGET_SECONDS else "no"
    print(
        f"\n### PDF protocol of {conflicts:,} conflicts ({changes:,} changes, {pages} pages), median of {args.repeat}\n"
    )
    print("| figure | seconds | ratio |")
    print("|---|---|---|")
    print(f"| render HTML (baseline) | {median(html):.3f} | 1 × |")
    print(f"| render PDF | {median(pdf):.2f} | {median(pdf) / median(html):.1f} × the HTML |")
    print(f"| render PDF, CPU time of this process | {median(pdf_cpu):.2f} | — |")
    if before is not None:
        print(f"| WeasyPrint printing the HTML (before, once) | {before:.2f} | {before / median(pdf):.1f} × the PDF |")
    print(f"| read the protocol from the master (`build_protocol`) | {median(built):.2f} | — |")
    print(f"| on demand: `sync-pipeline protocol --format pdf` in a new process | {median(cli):.2f} | — |")
    print(
        f"\ntarget: on demand ≤ {TARGET_SECONDS:.0f} s: {'met' if met == 'yes' else 'not met'}; load average {load()}"
    )


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
