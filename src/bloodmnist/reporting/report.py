"""Rebuild every report artefact (figures, report.xlsx, report.html) from a run folder alone."""

from __future__ import annotations

from pathlib import Path

from bloodmnist.evaluation.run_files import check_run_dir
from bloodmnist.reporting.excel import write_excel
from bloodmnist.reporting.figures import save_figures
from bloodmnist.reporting.html import write_html


def build_reports(run_dir: Path) -> dict[str, Path]:
    """Write figures, report.xlsx and report.html; returns artefact name -> path.

    Raises BloodMNISTError naming the file if summary.json, history.csv or predictions.npz is
    missing, before anything is written.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    paths = {f"figure:{name}": path for name, path in save_figures(run_dir).items()}
    paths["excel"] = write_excel(run_dir)
    paths["html"] = write_html(run_dir)  # after the figures, so it embeds the fresh ones
    return paths
