"""``pipeline.run_case`` called in this process: the result it returns is the one it writes, a
rerun leaves no stale heat map, a cancel leaves no result, and a result of another shape is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from BrainImageNetADLib.case_process import main as case_process_main
from BrainImageNetADLib.case_process import spec
from BrainImageNetADLib.core.errors import Cancelled, InputError
from BrainImageNetADLib.pipeline import CaseOptions, CaseResult, run_case


def test_result_is_what_result_json_holds_and_a_rerun_removes_the_old_heat_map(
    tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path
) -> None:
    stages: list[str] = []
    result = run_case(sample, tmp_path, tiny_bundle, CaseOptions(method="gradient"), progress=lambda stage, _: stages.append(stage))
    assert result == CaseResult.read(tmp_path / "result.json")
    assert result.heat_map.kind == "occlusion" and result.heat_map.method == "gradient" and result.qc is None
    assert result.heat_map.files == {"mni": "occlusion.nii.gz"} and result.regions_mni == "regions_mni.nii.gz"
    assert json.loads((tmp_path / "result.json").read_text())["occlusion"]["files"] == {"mni": "occlusion.nii.gz"}
    assert stages[0] == "ensemble" and result.seconds > 0
    again = run_case(sample, tmp_path, tiny_bundle, CaseOptions(method="none", threshold=0.3))
    assert again.heat_map is None and again.threshold == 0.3 and again.probability == pytest.approx(result.probability, abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions_mni.nii.gz", "result.json"]


def test_a_cancel_between_stages_leaves_no_result(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    with pytest.raises(Cancelled):
        run_case(sample, tmp_path, tiny_bundle, should_cancel=lambda: True)
    assert not (tmp_path / "result.json").exists()


def test_a_result_of_another_shape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"probability": 0.4}))
    with pytest.raises(InputError, match="not a result of this version"):
        CaseResult.read(tmp_path / "result.json")
    prediction_only = {"probability": 0.4, "fold_probabilities": [0.4], "threshold": 0.5, "label": "NC", "sensitivity": None}
    prediction_only |= {"specificity": None, "model_name": "m", "demo": True, "trained": False, "intended_use": "u", "logit": -0.4}
    (tmp_path / "result.json").write_text(json.dumps(prediction_only))  # the ensemble's answer without the run's record
    with pytest.raises(InputError, match="missing 7 required"):
        CaseResult.read(tmp_path / "result.json")
    (tmp_path / "result.json").write_text('{"probab')
    with pytest.raises(InputError, match="unreadable result"):
        CaseResult.read(tmp_path / "result.json")


def test_the_child_entry_point_reports_a_bad_bundle_in_one_line(
    tmp_path: Path, sample: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = case_process_main([spec(sample, tmp_path, tmp_path / "no-bundle", CaseOptions())])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: ") and "\n" not in error
