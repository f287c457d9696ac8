"""Every example runs as a user would run it, and reports what it should (and nothing when fixed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BUGGY = {
    "normalize_bug.py": {"transform.normalize_scale", "transform.normalize_missing", "input.collapsed"},
    "eval_accumulator_bug.py": {"eval.metric_mismatch", "data.split_overlap"},
    "stuck_at_chance.py": {
        "target.single_class_batches",
        "output.activated",
        "eval.chance_level",
        "eval.loss_at_chance",
    },
    "mode_bug.py": {"mode.train_in_eval", "mode.bn_updated_in_eval", "mode.eval_in_train"},
    "gradient_bug.py": {"grad.missing", "param.not_updated"},
}


def run_example(script: str, tmp_path: Path, *args: str) -> tuple[str, list[dict]]:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--log-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = sorted(tmp_path.glob("**/sanity_report_*.json"))  # one per run: fit, then test in some examples
    assert reports and reports[0].name == "sanity_report_fit.json"
    return completed.stdout, [f for report in reports for f in json.loads(report.read_text())["findings"]]


def serious(findings: list[dict]) -> list[str]:
    return [f"{f['code']}: {f['message']}" for f in findings if f["severity"] in ("warning", "error")]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BUGGY))
def test_buggy_example_is_diagnosed(script: str, tmp_path: Path) -> None:
    stdout, findings = run_example(script, tmp_path)
    assert BUGGY[script] <= {f["code"] for f in findings}
    assert "lightning-sanity report" in stdout


@pytest.mark.slow
def test_the_demo_report_does_not_claim_a_flat_training_loss_after_it_fell(tmp_path: Path) -> None:
    _, findings = run_example("normalize_bug.py", tmp_path)
    [plateau] = [f for f in findings if f["code"] == "eval.loss_at_chance"]
    [chance] = [f for f in findings if f["code"] == "eval.chance_level"]
    assert chance["evidence"]["epoch_train_losses"][-1] < 0.9 * plateau["evidence"]["ln_classes"]  # it fell ...
    assert plateau["resolved_epoch"] is not None and chance["resolved_epoch"] is None  # ... val still at chance


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BUGGY))
def test_fixed_example_is_quiet(script: str, tmp_path: Path) -> None:
    _, findings = run_example(script, tmp_path, "--fixed")
    assert serious(findings) == []


@pytest.mark.slow
def test_healthy_example_is_quiet(tmp_path: Path) -> None:
    _, findings = run_example("healthy.py", tmp_path)
    assert serious(findings) == []


@pytest.mark.slow
def test_cifar10_example_runs_offline_on_fake_data(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "cifar10_resnet18.py"),
            "--fake-data",
            "--epochs",
            "1",
            "--limit-batches",
            "2",
            "--batch-size",
            "16",
            "--log-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("**/sanity_report_fit.json")).read_text())
    assert serious(report["findings"]) == []
