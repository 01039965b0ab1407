"""The single-case workflow as one object that both skins drive: the Slicer Qt widget and the web
page. It owns the state (kept in the scene's parameter node, so a saved scene restores it), runs
predictions in a child process (``job``), loads the results into the scene (``scene``) and answers
threshold changes from the model card without running a network.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.resources import default_bundle, sample_t1
from ..model.bundle import ModelCard, read_card
from ..model.prediction import Prediction, classify
from ..pipeline import CaseOptions, CaseResult
from . import scene as mrml_scene
from .job import JobStatus, PredictionJob

#: Text of the banner shown above every result of a demonstration model.
DEMO_BANNER = "Demonstration model trained on synthetic data: not for diagnosis."
#: Banner of a model imported from third-party files (the authors' published networks).
THIRD_PARTY_BANNER = (
    "Third-party model, imported from the authors' files: research use only, all rights reserved by them; do not redistribute."
)


class CaseController:
    """One case in one scene.

    scene: the MRML scene; app_logic: its application logic (``slicer.app.applicationLogic()`` in
    Slicer, ``SlicerApp().app_logic`` on slicer-core); work_dir: where runs write their files (a
    new temporary folder when None, removed by ``close()``).
    """

    def __init__(self, scene: Any, app_logic: Any, work_dir: str | Path | None = None) -> None:
        self.scene = scene
        self.app_logic = app_logic
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="brainimagenet-ad-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.job: PredictionJob | None = None
        self.warnings: list[str] = []
        self._runs = 0
        self._cards: dict[Path, ModelCard] = {}

    # -- state ---------------------------------------------------------------------------------
    @property
    def parameter_node(self) -> Any:
        return mrml_scene.parameter_node(self.scene)

    @property
    def state(self) -> mrml_scene.SceneState:
        """The workflow state read from the parameter node."""
        return mrml_scene.load_state(self.parameter_node)

    def _update(self, **changes: Any) -> mrml_scene.SceneState:
        state = replace(self.state, **changes)
        mrml_scene.save_state(self.parameter_node, state)
        return state

    def _chosen_threshold(self) -> float | None:
        """The threshold set in this scene (slider, preset, console), or None when none was set and
        the model card's "balanced" preset applies."""
        return self.state.threshold if self.parameter_node.GetParameter("Threshold") else None

    def node(self, role: str) -> Any:
        """The node the parameter node references under ``role`` (``scene.ROLES``), or None."""
        return self.parameter_node.GetNodeReference(role)

    def _set_node(self, role: str, node: Any) -> None:
        self.parameter_node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    # -- input and model -----------------------------------------------------------------------
    def load_t1(self, path: str | Path, name: str | None = None) -> Any:
        """Read a T1 image file into the scene, make it the input and show it; return its node."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"file not found: {path}")
        node = mrml_scene.read_volume(self.scene, path, name or path.name.split(".")[0])
        self.set_input(node)
        return node

    def load_maps(self, gmd: str | Path, gmv: str | Path) -> Any:
        """Use SPM12's grey-matter maps (``wc1*``: density, ``mwc1*``: modulated volume; MNI 1.5 mm,
        121x145x121 or the 96x120x86 crop) as the input instead of a T1: runs skip preprocessing and
        the heat map lies on the MNI grid. The density map is loaded and shown; returns its node."""
        paths = {"GMD": Path(gmd), "GMV": Path(gmv)}
        for kind, path in paths.items():
            if not path.is_file():
                raise InputError(f"{kind} map not found: {path}")
        node = mrml_scene.read_volume(self.scene, paths["GMD"], paths["GMD"].name.split(".")[0])
        self.set_input(node)
        self.parameter_node.SetParameter("InputMaps", json.dumps({kind: str(path) for kind, path in paths.items()}))
        return node

    def input_maps(self) -> dict[str, Path] | None:
        """The SPM maps chosen with ``load_maps`` while their density map is the input, else None
        (the input is a T1)."""
        text = self.parameter_node.GetParameter("InputMaps")
        if not text or self.node("InputVolume") is None:
            return None
        return {kind: Path(path) for kind, path in json.loads(text).items()}

    def load_sample(self) -> Any:
        """Load the bundled sample case (the Colin27 T1) as the input."""
        return self.load_t1(sample_t1(), "Sample T1 (Colin27)")

    def set_input(self, node: Any) -> None:
        """Make a scalar volume node of the scene (loaded from a file or from DICOM) the input T1."""
        if node is not None and not node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"{node.GetName()} is not a scalar volume")
        self.parameter_node.SetParameter("InputMaps", "")
        self._set_node("InputVolume", node)
        if node is not None:
            mrml_scene.set_up_views(self.app_logic, node, None, self.state.opacity, None)

    def bundle_path(self) -> Path:
        """Folder of the chosen model bundle (the shipped default when none is chosen)."""
        model_path = self.state.model_path
        return Path(model_path) if model_path else default_bundle()

    def set_model(self, path: str | Path | None) -> ModelCard:
        """Choose a model bundle folder (None: the shipped default); its card is read and checked."""
        card = read_card(path or default_bundle())
        self._update(model_path=str(path or ""), threshold=card.threshold(), result=None)
        return card

    def card(self) -> ModelCard:
        """The model card of the chosen bundle (read once per bundle: a slider move reads no file)."""
        path = self.bundle_path()
        if path not in self._cards:
            self._cards[path] = read_card(path)
        return self._cards[path]

    def notice(self) -> dict[str, Any]:
        """What the panel always shows about the model: name, intended use, the demo banner."""
        card = self.card()
        banner = DEMO_BANNER if card.demo else (THIRD_PARTY_BANNER if "third_party" in card.data else "")
        return {"name": card.name, "intended_use": card.intended_use, "banner": banner}

    # -- run -----------------------------------------------------------------------------------
    def start(self, options: CaseOptions | None = None, python: str | None = None) -> PredictionJob:
        """Start preprocessing, ensemble and occlusion on the input T1 in a child process.

        The input node is written to the run folder first (so volumes loaded from DICOM or edited
        in the scene are used as shown). The threshold chosen in this scene goes to the run and
        stays after it. Poll with ``poll()``; stop with ``cancel()``.
        """
        if self.job is not None and self.job.status.state == "running":
            raise InputError("a run is already in progress")
        volume = self.node("InputVolume")
        if volume is None:
            raise InputError("choose an input T1 volume first")
        self._runs += 1
        run_dir = self.work_dir / f"run-{self._runs}"
        run_dir.mkdir(parents=True, exist_ok=True)
        maps = self.input_maps()
        if maps is None:
            t1_path = run_dir / "input_t1.nii.gz"
            storage = volume.CreateDefaultStorageNode()
            storage.SetFileName(str(t1_path))
            if not storage.WriteData(volume):
                raise InputError(f"could not write {volume.GetName()} for the run")
        options = replace(options or CaseOptions(), threshold=self._chosen_threshold())
        self.warnings = []
        self.job = PredictionJob(maps or t1_path, run_dir / "output", self.bundle_path(), options, python)
        return self.job

    def poll(self) -> JobStatus | None:
        """The running job's status (None when there is none); loads the results when it is done."""
        if self.job is None:
            return None
        before = self.job.status.state
        status = self.job.poll()
        if before == "running" and status.state == "done":
            try:
                self.load_results(self.job.out_dir)
            except InputError as error:  # the scene changed under the run: say so, add nothing
                status.state, status.message = "failed", str(error)
        if status.state != "running":
            result = self.state.result if status.state == "done" else None
            qc_warnings = (result.qc or {}).get("warnings") or [] if result is not None else []
            self.warnings = self.job.warnings() + [f"QC: {w}" for w in qc_warnings]
        return status

    def cancel(self) -> None:
        """Stop the running job, if any."""
        if self.job is not None:
            self.job.cancel()

    def load_results(self, out_dir: str | Path) -> CaseResult:
        """Load a finished run's folder (``result.json``, native heat map, native regions) into the
        scene, replacing earlier results; set up the views; return the result."""
        out_dir = Path(out_dir)
        if self.node("InputVolume") is None:
            raise InputError("the input volume is no longer in the scene (was the scene closed?): the results were not loaded")
        result = CaseResult.read(out_dir / "result.json")
        for role in ("HeatMap", "Regions", "RegionTable"):
            old = self.node(role)
            if old is not None:
                self.scene.RemoveNode(old)
        heat = regions = table = centre = None
        section = result.heat_map
        if section is not None:
            heat_file = section.files.get("native") or section.files["mni"]  # T1 input: the T1's grid; SPM maps: MNI
            heat = mrml_scene.read_volume(self.scene, out_dir / heat_file, mrml_scene.HEAT_MAP_NAME)
            mrml_scene.show_heat_map(heat, section.legend, self.state.cutoff, section.centre)
            table = mrml_scene.region_table(self.scene, section.regions["top_regions"])
        regions_file = result.regions_native or result.regions_mni
        if regions_file:
            from ..explain.atlas import REGIONS

            labels = mrml_scene.read_volume(self.scene, out_dir / regions_file, "regions", labelmap=True)
            centre = mrml_scene.centroid_ras(labels)
            regions = mrml_scene.regions_segmentation(self.scene, labels, REGIONS)
            self.scene.RemoveNode(labels)
        self._set_node("HeatMap", heat)
        self._set_node("Regions", regions)
        self._set_node("RegionTable", table)
        chosen = self._chosen_threshold()
        self._update(result=result, threshold=result.threshold if chosen is None else chosen)
        mrml_scene.set_up_views(self.app_logic, self.node("InputVolume"), heat, self.state.opacity, centre)
        return result

    # -- results -------------------------------------------------------------------------------
    def prediction(self) -> Prediction | None:
        """The last result at the current threshold (None before a run)."""
        state = self.state
        if state.result is None:
            return None
        return classify(state.result.probability, state.result.fold_probabilities, self.card(), state.threshold)

    def set_threshold(self, threshold: float) -> Prediction | None:
        """Move the decision threshold in [0, 1]: label, sensitivity and specificity come from the
        model card; no network runs."""
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must lie in [0, 1], got {threshold}")
        self._update(threshold=float(threshold))
        return self.prediction()

    def set_threshold_preset(self, name: str) -> Prediction | None:
        """Set the threshold to one of the card's presets ("balanced", "screening")."""
        presets = self.card().threshold_presets
        if name not in presets:
            raise InputError(f"the model card has no '{name}' threshold (it has: {', '.join(presets) or 'none'})")
        return self.set_threshold(presets[name])

    def set_opacity(self, opacity: float) -> None:
        """Opacity of the heat map over the T1, in [0, 1]."""
        self._update(opacity=float(opacity))
        mrml_scene.set_opacity(self.scene, opacity)

    def set_cutoff(self, cutoff: float) -> None:
        """Hide heat-map values smaller than ``cutoff`` (a fraction in [0, 1]) of the largest |value|."""
        self._update(cutoff=float(cutoff))
        mrml_scene.occlusion_color_node(self.scene, cutoff)

    def save_scene(self, path: str | Path) -> Path:
        """Save the scene, results and state included, as a ``.mrb`` bundle."""
        return mrml_scene.save_scene_bundle(self.app_logic, path)

    def write_report(self, folder: str | Path) -> Path:
        """Write the case report (HTML with PNG slices, and JSON) into ``folder``; return the HTML path."""
        from .report import write_report

        state = self.state
        if state.result is None:
            raise InputError("run the prediction first")
        return write_report(
            folder,
            state.result,
            self.prediction(),
            self.notice(),
            self.node("InputVolume"),
            self.node("HeatMap"),
            self.node("Regions"),
            state.cutoff,
        )

    def scene_closed(self) -> None:
        """The scene was closed (or cleared): stop the run that belonged to it and remove the run
        folders, which hold files derived from the patient's scan."""
        self.cancel()
        if self.job is not None:
            self.job.wait(timeout=30)
            self.job = None
        for run_dir in self.work_dir.glob("run-*"):
            shutil.rmtree(run_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop any run and remove the temporary work folder this controller created."""
        self.cancel()
        if self.job is not None:
            self.job.wait(timeout=30)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
