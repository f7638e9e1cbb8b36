"""Rebuild every report artefact (figures, report.xlsx, report.html) from a run folder alone."""

from __future__ import annotations

from pathlib import Path

from bloodmnist.errors import BloodMNISTError
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
    try:
        paths = {f"figure:{name}": path for name, path in save_figures(run_dir).items()}
        paths["excel"] = write_excel(run_dir)
        paths["html"] = write_html(run_dir)  # after the figures, so it embeds the fresh ones
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # UnicodeDecodeError too
        # hand-edited or damaged files (a wrong type, a missing key, a per-class table of
        # another length) give these: one line naming the folder and the reason
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise BloodMNISTError(
            f"cannot build the reports of {run_dir} ({type(exc).__name__}: {reason}); if "
            "summary.json, history.csv or predictions.npz there was edited or is damaged, "
            "restore it from the run"
        ) from exc
    return paths
