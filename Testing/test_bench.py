"""``brainimagenet-bench``, the developers' benchmarks, run as a command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_GUARD_S


def run_bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "BrainImageNetBench.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_bench_predict_prints_a_row_per_preset_and_writes_them_as_markdown(tmp_path: Path) -> None:
    result = run_bench("predict", "--presets", "tiny", "--batch", "2", "--markdown", tmp_path / "predict.md")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("peak measured now (fp32): matmul") and "openvino_convolution" in lines[0]
    assert lines[1].startswith("tiny: 1.3 GMAC per sample per fold")
    header, rows, footer = lines[2], [line.split() for line in lines[3:-1]], lines[-1]
    assert "s_per_subject" in header and "pct_of_peak" in header and "other_jobs_cpu" in header
    engines = {" ".join(row[1:3]): row for row in rows[:4]}
    assert list(engines) == ["torch f32", "openvino f32", "torch bf16", "openvino bf16"]
    assert float(engines["openvino f32"][7]) < 1e-5  # max abs difference from PyTorch fp32
    assert float(engines["torch f32"][5]) == pytest.approx(3600 / float(engines["torch f32"][4]), rel=1e-3)  # subjects per hour
    assert all(float(row[4]) > 0 for row in rows[:4])
    assert rows[4][1:5] == ["openvino", "f32", "batch", "2"]
    assert footer.startswith("torch threads")
    markdown = (tmp_path / "predict.md").read_text().splitlines()
    assert markdown[0] == "# Prediction speed" and "`brainimagenet-bench predict`" in markdown[2]
    table = [line.split("|")[1:-1] for line in markdown if line.startswith("|")]
    assert [c.strip() for c in table[0]] == header.split() and len(table) == 2 + len(rows)
    assert markdown[-1].startswith("- ") and "CPUs, torch threads" in markdown[-1]


def test_a_missing_reference_folder_is_one_line() -> None:
    result = run_bench("fidelity", "--reference", "/nonexistent/spm12")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_bench_reach_finds_the_band_the_ad_network_never_sees() -> None:
    result = run_bench("reach", "--presets", "tiny")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "model-grid voxels that reach the output: x 0-91 of 96, y 0-115 of 120, z 0-83 of 86" in lines[-1]
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[1:-2])}
    # (gm_voxels, unreachable_share, sensitivity tiny, sensitivity of the shipped ensemble)
    assert float(rows["middle temporal, left"][1]) > 0.1 and float(rows["middle temporal, right"][1]) == 0
    assert float(rows["hippocampus, left"][1]) == 0 and float(rows["hippocampus, left"][2]) > 1.5
    assert float(rows["all grey matter"][2]) == float(rows["all grey matter"][3]) == 1
