"""Real 2-process DDP (CPU, gloo): global statistics, identical findings on every rank, no hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("ddp_fit.py")


def run(tmp_path: Path, devices: int, *flags: str) -> tuple[list[dict[str, Any]], str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(devices), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(devices)]
    return ranks, completed.stderr, completed.stdout


@pytest.mark.slow
def test_ddp_confusion_matrix_counts_every_validation_sample_once(tmp_path: Path) -> None:
    ranks, _, _ = run(tmp_path, 2)
    matrices = [rank["matrix"] for rank in ranks]
    assert matrices[0] is not None and matrices[0] == matrices[1]
    assert sum(map(sum, matrices[0])) == ranks[0]["val_samples"]
    assert [rank["val_inputs_seen"] for rank in ranks] == [ranks[0]["val_samples"]] * 2


@pytest.mark.slow
def test_ddp_healthy_run_findings_match_single_process_and_every_rank(tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    ranks, _, _ = run(tmp_path / "ddp", 2)
    [single], _, _ = run(tmp_path / "single", 1)
    assert ranks[0]["findings"] == ranks[1]["findings"]
    serious = {code for code, _, severity in ranks[0]["findings"] if severity != "info"}
    serious_single = {code for code, _, severity in single["findings"] if severity != "info"}
    assert serious <= serious_single == set()


@pytest.mark.slow
def test_ddp_finding_on_one_rank_reaches_all_warns_once_and_never_hangs(tmp_path: Path) -> None:
    ranks, stderr, _ = run(tmp_path, 2, "--one-rank-error")
    for rank in ranks:
        assert ("test.one_rank", "", "error") in [tuple(f) for f in rank["findings"]]
    assert stderr.count("test.one_rank: only on the last rank") == 1


@pytest.mark.slow
def test_ddp_with_a_logger_ends_and_reports_once_what_only_the_last_rank_saw_in_the_last_callback(
    tmp_path: Path,
) -> None:
    """``Trainer.log_dir`` is a collective: reading it on rank zero only used to hang here. The last callback's
    rank-1 finding used to miss rank zero's report, which the first callback published before the others merged."""
    ranks, _, stdout = run(tmp_path, 2, "--one-rank-error", "--logger")
    [report] = tmp_path.rglob("sanity_report_fit.json")
    assert sorted(p.name for p in tmp_path.rglob("sanity_report*")) == [
        "sanity_report_fit.json",
        "sanity_report_fit.md",
    ]
    data = json.loads(report.read_text())
    assert ("test.one_rank", "error") in {(f["code"], f["severity"]) for f in data["findings"]}
    assert data["status"] == "finished"
    assert stdout.count("lightning-sanity report (fit)") == 1
    assert "test.one_rank" in stdout
    assert ranks[0]["findings"] == ranks[1]["findings"]
