"""``python -m fopru.pareto SWEEP_DIR``: summarize a sweep folder by hand."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from fopru.jobs import finished_job_folders
from fopru.pareto.compare import compare_jobs, describe
from fopru.pareto.plots import plot_kept_patches
from fopru.pareto.results import collect
from fopru.pareto.summary import summarize_sweep
from fopru.pareto.table import pivot_markdown


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fopru.pareto SWEEP_DIR [--group NAME] [--wandb] [--table ROW COLUMN] [--kept-at KEEP]
    [--compare JOB_A JOB_B]``: summarize a sweep folder by hand."""
    parser = argparse.ArgumentParser(prog="python -m fopru.pareto", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--group", default=None, help="W&B group (default: the folder's name)")
    parser.add_argument("--wandb", action="store_true", help="also log a sweep-summary run to W&B")
    parser.add_argument("--kept-at", type=float, help="also draw the kept patches of the jobs at this keep only")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("JOB_A", "JOB_B"),
        help="also print JOB_B minus JOB_A (job folders, relative to SWEEP_DIR or not) on their shared samples, with "
        "its 95%% paired bootstrap interval",
    )
    parser.add_argument(
        "--table",
        nargs=2,
        metavar=("ROW", "COLUMN"),
        help="also print a Markdown table of the primary metric (%%), e.g. --table strategy keep",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sweep_dir: Path = arguments.sweep_dir
    summary = summarize_sweep(sweep_dir, arguments.group or sweep_dir.resolve().name, arguments.wandb)
    shown = {key: value for key, value in vars(summary).items() if key != "kept_pages"}
    shown["kept_pages"] = [str(page) for page in summary.kept_pages]
    print(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in shown.items()}))
    folders = finished_job_folders(sweep_dir)
    if arguments.kept_at is not None:
        kept_path = sweep_dir / f"kept_patches_keep{arguments.kept_at:g}.png"
        print(plot_kept_patches(sweep_dir, kept_path, keep=arguments.kept_at, folders=folders))
    if arguments.table:
        print(pivot_markdown(collect(sweep_dir, folders), *arguments.table))
    if arguments.compare:
        job_a, job_b = (
            job if job.is_absolute() or not (sweep_dir / job).is_dir() else sweep_dir / job for job in arguments.compare
        )
        print(describe(compare_jobs(job_a, job_b), *arguments.compare))
