"""BrainImageNetAD: the 3D Slicer module (Module, Widget, Logic, Test).

The widget is a thin Qt layer; everything it does is in ``BrainImageNetADLib`` (plain Python,
tested without Slicer). Research use only: not a medical device.
"""

import logging
import shutil

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Python packages the library needs, as (import name, pip requirement).
REQUIRED_PACKAGES = [
    ("torch", "torch"),
    ("safetensors", "safetensors"),
    ("nibabel", "nibabel"),
    ("scipy", "scipy"),
    ("ants", "antspyx"),
    ("matplotlib", "matplotlib"),
]


class BrainImageNetAD(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainImageNet AD")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainImageNet-AD contributors"]
        self.parent.helpText = _(
            "Alzheimer's disease classifier for brain MRI: a T1 is preprocessed into grey-matter density and "
            "volume maps, a 5-fold ensemble of 3D Inception-ResNet-V2 transfer networks (Lu et al., 2022) gives "
            "the AD probability, and an occlusion map shows the regions the networks use, over the T1. "
            "<b>Research and teaching only; not for diagnosis.</b> "
            "See the extension's README for the command line and the model cards."
        )
        self.parent.acknowledgementText = _(
            "Method: Lu B. et al., A Practical Alzheimer Disease Classifier via Brain Imaging-Based Deep "
            "Learning on 85,721 Samples, J Big Data 2022. This open re-implementation shares no code or weights with it."
        )


class BrainImageNetADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: every action is a call to ``BrainImageNetADLib.controller.CaseController``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainImageNetAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainImageNetADLogic()
        from BrainImageNetADLib.job import HEAT_MAPS

        for name, (label, _method, _fold) in HEAT_MAPS.items():
            self.ui.heatMapComboBox.addItem(label, name)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneChanged)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.modelPathEdit.connect("currentPathChanged(QString)", self.onModelChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", lambda: self.logic.controller().cancel())
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThreshold)
        self.ui.balancedButton.connect("clicked(bool)", lambda: self.onPreset("balanced"))
        self.ui.screeningButton.connect("clicked(bool)", lambda: self.onPreset("screening"))
        self.ui.opacitySlider.connect("valueChanged(double)", lambda v: self.logic.controller().set_opacity(v))
        self.ui.cutoffSlider.connect("valueChanged(double)", lambda v: self.logic.controller().set_cutoff(v))
        self.ui.saveSceneButton.connect("clicked(bool)", self.onSaveScene)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.updateGUIFromState()

    def cleanup(self) -> None:
        self.timer.stop()
        self.removeObservers()

    def onSceneChanged(self, caller=None, event=None) -> None:
        self.updateGUIFromState()

    def updateGUIFromState(self) -> None:
        """Show the state held by the parameter node (also after a scene is loaded)."""
        if missingPackages():
            self.ui.demoBannerLabel.text = _("Python packages needed: {packages}. Press Run to install them.").format(
                packages=", ".join(missingPackages())
            )
            self.ui.applyButton.enabled = True
            return
        controller = self.logic.controller()
        state = controller.state
        self.ui.inputSelector.blockSignals(True)
        self.ui.inputSelector.setCurrentNode(controller.node("InputVolume"))
        self.ui.inputSelector.blockSignals(False)
        for widget, value in ((self.ui.opacitySlider, state.opacity), (self.ui.cutoffSlider, state.cutoff)):
            widget.blockSignals(True)
            widget.value = value
            widget.blockSignals(False)
        from BrainImageNetADLib.errors import BrainImageNetError

        try:
            notice = controller.notice()
        except (BrainImageNetError, FileNotFoundError) as exc:  # a broken bundle folder: say so in the panel
            notice = {"banner": str(exc), "intended_use": "-"}
        self.ui.demoBannerLabel.text = notice["banner"]
        self.ui.demoBannerLabel.visible = bool(notice["banner"])
        self.ui.intendedUseLabel.text = notice["intended_use"]
        self.ui.applyButton.enabled = controller.node("InputVolume") is not None and not self.timer.isActive()
        self.ui.regionTableView.setMRMLTableNode(controller.node("RegionTable"))
        self.showPrediction()

    def showPrediction(self) -> None:
        controller = self.logic.controller()
        prediction = controller.prediction()
        self.ui.resultsCollapsibleButton.enabled = prediction is not None
        if prediction is None:
            return
        from BrainImageNetADLib.ensemble import percent

        self.ui.thresholdSlider.blockSignals(True)
        self.ui.thresholdSlider.value = prediction.threshold
        self.ui.thresholdSlider.blockSignals(False)
        self.ui.probabilityLabel.text = f"{prediction.probability:.3f} ({prediction.label})"
        self.ui.foldsLabel.text = ", ".join(f"{p:.3f}" for p in prediction.fold_probabilities)
        self.ui.performanceLabel.text = _("sensitivity {sensitivity}, specificity {specificity} (model card)").format(
            sensitivity=percent(prediction.sensitivity), specificity=percent(prediction.specificity)
        )
        qc = controller.state.result.get("qc") or {}
        volumes = ", ".join(f"{k} {v}" for k, v in (qc.get("volumes_ml") or {}).items())
        self.ui.qcLabel.text = f"{qc.get('verdict', '-')}. {'; '.join(qc.get('warnings') or [])} {volumes}"

    def onInputChanged(self, node) -> None:
        with slicer.util.tryWithErrorDisplay(_("This volume cannot be used."), waitCursor=True):
            self.logic.controller().set_input(node)
        self.updateGUIFromState()

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the sample case."), waitCursor=True):
            self.logic.controller().load_sample()
        self.updateGUIFromState()

    def onModelChanged(self, path: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("This folder is not a usable model bundle."), waitCursor=True):
            self.logic.controller().set_model(path or None)
        self.updateGUIFromState()

    def onApply(self) -> None:
        if missingPackages():
            if ensureDependencies():
                self.updateGUIFromState()  # installed: now choose an input and press Run
            return
        from BrainImageNetADLib.job import RunOptions

        options = RunOptions.for_heat_map(self.ui.heatMapComboBox.currentData, self.ui.forceCheckBox.checked)
        with slicer.util.tryWithErrorDisplay(_("Could not start the prediction."), waitCursor=True):
            self.logic.controller().start(options, python=self.logic.python())
            self.ui.statusLabel.text = _("starting")
            self.ui.cancelButton.enabled = True
            self.ui.applyButton.enabled = False
            self.timer.start()

    def onPoll(self) -> None:
        """Timer tick: show the run's progress; when it ends, show its result or its error."""
        status = self.logic.controller().poll()
        bars = {
            "Preprocessing": self.ui.preprocessingProgressBar,
            "Ensemble": self.ui.ensembleProgressBar,
            "Occlusion map": self.ui.occlusionProgressBar,
        }
        for group, bar in bars.items():
            bar.value = int(100 * status.stages.get(group, 0))
        self.ui.statusLabel.text = status.message
        if status.state == "running":
            return
        self.timer.stop()
        self.ui.cancelButton.enabled = False
        warnings = self.logic.controller().warnings
        if status.state == "failed":
            slicer.util.errorDisplay(_("Prediction failed: {message}").format(message=status.message))
        elif warnings:
            slicer.util.warningDisplay("\n".join(warnings), windowTitle=_("BrainImageNet AD warnings"))
        self.updateGUIFromState()

    def onThreshold(self, value: float) -> None:
        if self.logic.controller().state.result is not None:
            self.logic.controller().set_threshold(value)
            self.showPrediction()

    def onPreset(self, name: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("No such threshold preset."), waitCursor=False):
            self.logic.controller().set_threshold_preset(name)
        self.showPrediction()

    def onSaveScene(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Save scene"), "case.mrb", "Medical Reality Bundle (*.mrb)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not save the scene."), waitCursor=True):
                self.logic.controller().save_scene(path)

    def onSaveReport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, _("Folder for the report"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("Could not write the report."), waitCursor=True):
                path = self.logic.controller().write_report(folder)
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path)))


def missingPackages() -> list:
    """pip requirements of the packages the library needs that Slicer's Python lacks."""
    import importlib.util

    return [req for name, req in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]


def ensureDependencies() -> bool:
    """Offer to install the missing packages (``missingPackages``); True once they are present."""
    missing = missingPackages()
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _("BrainImageNet AD needs these Python packages: {packages}. Install them now (internet access needed)?").format(
            packages=", ".join(missing)
        ),
        _(
            "Offline? Install them with pip into Slicer's Python from local wheel files "
            "(PythonSlicer -m pip install --no-index --find-links FOLDER ...), then restart Slicer."
        ),
    ):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils  # from the PyTorch extension: picks a build that fits the GPU

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            missing.remove("torch")
        except ImportError:
            logging.info("PyTorch extension not installed; installing torch with pip")
    with slicer.util.WaitCursor():
        slicer.util.pip_install(missing)
    import importlib

    importlib.invalidate_caches()
    return not missingPackages()


class BrainImageNetADLogic(ScriptedLoadableModuleLogic):
    """Gives the module's controller for the current scene; usable without the widget
    (Python console, self-test): ``BrainImageNetADLogic().controller().load_sample()``..."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._controller = None

    def controller(self):
        """The ``CaseController`` of ``slicer.mrmlScene`` (its state lives in the parameter node)."""
        from BrainImageNetADLib.controller import CaseController

        if self._controller is None or self._controller.scene is not slicer.mrmlScene:
            self._controller = CaseController(slicer.mrmlScene, slicer.app.applicationLogic())
        return self._controller

    @staticmethod
    def python() -> str:
        """The Python interpreter that runs predictions: Slicer's own (PythonSlicer)."""
        import sys

        return shutil.which("PythonSlicer") or sys.executable


class BrainImageNetADTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: the whole workflow on the bundled sample case."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WorkflowOnSample()

    def test_WorkflowOnSample(self):
        import tempfile
        import time

        from BrainImageNetADLib.job import RunOptions

        logic = BrainImageNetADLogic()
        controller = logic.controller()
        self.delayDisplay("Loading the sample case")
        controller.load_sample()
        self.delayDisplay("Running preprocessing, ensemble and occlusion (one fold)")
        controller.start(RunOptions(occlusion_fold=0), python=logic.python())
        end = time.monotonic() + 900
        while controller.poll().state == "running":
            self.assertLess(time.monotonic(), end)
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(controller.poll().state, "done", controller.poll().message)
        prediction = controller.prediction()
        self.assertTrue(0.0 < prediction.probability < 1.0)
        self.assertEqual(len(prediction.fold_probabilities), 5)
        for role in ("InputVolume", "HeatMap", "Regions", "RegionTable"):
            self.assertIsNotNone(controller.node(role), role)
        self.assertEqual(controller.set_threshold(0.0).label, "AD")
        folder = tempfile.mkdtemp()
        controller.save_scene(f"{folder}/case.mrb")
        controller.write_report(folder)
        slicer.util.mainWindow().grab().save(f"{folder}/desktop.png")
        self.delayDisplay(f"Test passed; scene, report and screenshot in {folder}")
