"""BrainImageNetAD: the 3D Slicer module (Module, Widget, Logic, Test).

The widget is a thin Qt layer; everything it does is in ``BrainImageNetADLib`` (plain Python,
tested without Slicer). Research use only: not a medical device.

This file and ``BrainImageNetADLib.core.dependencies`` parse on Python 3.9, so that Slicer 5.8 and
older load the module and show which Slicer release it needs instead of failing.
"""

import importlib
import importlib.util
import shutil
from pathlib import Path

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BrainImageNetADLib.core.dependencies import python_problem


class BrainImageNetAD(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainImageNet AD")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainImageNet-AD contributors"]
        self.parent.helpText = (f"<b>{python_problem()}</b><br>" if python_problem() else "") + _(
            "Alzheimer's disease classifier for brain MRI: a T1 (or SPM12's wc1/mwc1 maps) goes through "
            "preprocessing into grey-matter density and volume maps, a 5-fold ensemble of 3D Inception-ResNet-V2 "
            "transfer networks (Lu et al., 2022) gives the AD probability, and an occlusion map shows the regions "
            "the networks use, over the T1. <b>Research and teaching only; not for diagnosis.</b> "
            "See the extension's README for the command line and the model cards."
        )
        self.parent.acknowledgementText = _(
            "Method: Lu B. et al., A Practical Alzheimer Disease Classifier via Brain Imaging-Based Deep "
            "Learning on 85,721 Samples, J Big Data 2022. This open re-implementation shares no code or weights with it."
        )


class BrainImageNetADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: every action is a call to ``BrainImageNetADLib.viewer.controller.CaseController``; the
    panel shows the module's parameter node and follows it (ModifiedEvent), so changes made from
    the Python console or by loading a scene appear too."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if python_problem():
            label = qt.QLabel(python_problem())
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainImageNetAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainImageNetADLogic()
        from BrainImageNetADLib.pipeline import HEAT_MAPS
        from BrainImageNetADLib.viewer.job import DEVICES

        for name, (label, _kind, _method, _fold) in HEAT_MAPS.items():
            self.ui.heatMapComboBox.addItem(label, name)
        for name, label in DEVICES.items():
            self.ui.deviceComboBox.addItem(label, name)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.loadMapsButton.connect("clicked(bool)", self.onLoadMaps)
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
        self.initializeParameterNode()

    # -- parameter node, as in Slicer's scripted module template --------------------------------
    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def cleanup(self) -> None:
        """The module is being unloaded (reload, application exit): stop the run and remove its
        files, which are derived from the patient's scan."""
        self.timer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.close()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.timer.stop()
        self.setParameterNode(None)
        self.logic.sceneClosed()

    def onSceneEndClose(self, caller=None, event=None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        if self.logic.dependencyPlan():
            self.setParameterNode(None)
            return
        self.setParameterNode(self.logic.controller().parameter_node)

    def setParameterNode(self, node) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """Show the state held by the parameter node."""
        plan = self.logic.dependencyPlan()
        if plan:
            self.ui.demoBannerLabel.text = _("Python packages needed: {packages}. Press Run to install them.").format(
                packages=", ".join(plan.names())
            )
            self.ui.applyButton.enabled = True
            return
        if self._parameterNode is None:
            return
        controller = self.logic.controller()
        state = controller.state
        for widget, value in ((self.ui.opacitySlider, state.opacity), (self.ui.cutoffSlider, state.cutoff)):
            widget.blockSignals(True)
            widget.value = value
            widget.blockSignals(False)
        self.ui.inputSelector.blockSignals(True)
        self.ui.inputSelector.setCurrentNode(controller.node("InputVolume"))
        self.ui.inputSelector.blockSignals(False)
        from BrainImageNetADLib.core.errors import BrainImageNetError

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
        from BrainImageNetADLib.model.prediction import fold_text, percent

        self.ui.thresholdSlider.blockSignals(True)
        self.ui.thresholdSlider.value = prediction.threshold
        self.ui.thresholdSlider.blockSignals(False)
        self.ui.probabilityLabel.text = f"{prediction.probability:.3f} ({prediction.label})"
        self.ui.foldsLabel.text = f"{fold_text(prediction.fold_probabilities)}; mean logit {prediction.logit:+.3f}"
        self.ui.performanceLabel.text = _("sensitivity {sensitivity}, specificity {specificity} (model card)").format(
            sensitivity=percent(prediction.sensitivity), specificity=percent(prediction.specificity)
        )
        qc = controller.state.result.qc or {}
        volumes = ", ".join(f"{k} {v}" for k, v in (qc.get("volumes_ml") or {}).items())
        self.ui.qcLabel.text = f"{qc.get('verdict', '-')}. {'; '.join(qc.get('warnings') or [])} {volumes}"

    # -- actions -----------------------------------------------------------------------------------
    def onInputChanged(self, node) -> None:
        with slicer.util.tryWithErrorDisplay(_("This volume cannot be used."), waitCursor=True):
            self.logic.controller().set_input(node)

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the sample case."), waitCursor=True):
            self.logic.controller().load_sample()

    def onLoadMaps(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("These maps cannot be used."), waitCursor=True):
            self.logic.controller().load_maps(self.ui.gmdPathEdit.currentPath, self.ui.gmvPathEdit.currentPath)

    def onModelChanged(self, path: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("This folder is not a usable model bundle."), waitCursor=True):
            self.logic.controller().set_model(path or None)

    def onApply(self) -> None:
        if self.logic.dependencyPlan():
            if self.installDependencies():
                self.initializeParameterNode()  # installed: now choose an input and press Run
            return
        from BrainImageNetADLib.pipeline import CaseOptions

        options = CaseOptions.for_heat_map(
            self.ui.heatMapComboBox.currentData, self.ui.forceCheckBox.checked, self.ui.deviceComboBox.currentData
        )
        with slicer.util.tryWithErrorDisplay(_("Could not start the prediction."), waitCursor=True):
            self.logic.controller().start(options, python=self.logic.python())
            self.ui.statusLabel.text = _("starting")
            self.ui.cancelButton.enabled = True
            self.ui.applyButton.enabled = False
            self.timer.start()

    def onPoll(self) -> None:
        """Timer tick: show the run's progress; when it ends, show its result or its error."""
        status = self.logic.controller().poll()
        if status is None:
            self.timer.stop()
            return
        bars = {
            "Preprocessing": self.ui.preprocessingProgressBar,
            "Ensemble": self.ui.ensembleProgressBar,
            "Heat map": self.ui.occlusionProgressBar,
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
        self.updateGUIFromParameterNode()

    def onThreshold(self, value: float) -> None:
        if self.logic.controller().state.result is not None:
            self.logic.controller().set_threshold(value)

    def onPreset(self, name: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("No such threshold preset."), waitCursor=False):
            self.logic.controller().set_threshold_preset(name)

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

    # -- first use: the Python packages ------------------------------------------------------------
    def installDependencies(self) -> bool:
        """Say what is missing and its size, ask, then install it with pip (from the internet, or
        from a folder of wheel files when offline), with pip's progress in the status bar. True
        once nothing is missing."""
        from BrainImageNetADLib.core import dependencies

        plan = self.logic.dependencyPlan()
        withPyTorchExtension = "torch" in plan.names() and importlib.util.find_spec("PyTorchUtils") is not None
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("BrainImageNet AD: install Python packages"))
        box.setText(_("BrainImageNet AD needs these Python packages in Slicer's Python: {packages}.").format(packages=plan.describe()))
        box.setInformativeText(
            _(
                "Packages Slicer already has are kept as they are.{torch} Offline? Choose 'From a folder' and give a "
                "folder of wheel files for this computer (pip download on a computer with internet access)."
            ).format(
                torch=_(" PyTorch comes from the PyTorch extension, which picks a build for your GPU.") if withPyTorchExtension else ""
            )
        )
        fromInternet = box.addButton(_("Install"), qt.QMessageBox.AcceptRole)
        fromFolder = box.addButton(_("From a folder..."), qt.QMessageBox.ActionRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        wheelDir = None
        if box.clickedButton() == fromFolder:
            wheelDir = qt.QFileDialog.getExistingDirectory(None, _("Folder of wheel files"))
            if not wheelDir:
                return False
        elif box.clickedButton() != fromInternet:
            return False

        def progress(line: str) -> None:
            slicer.util.showStatusMessage(line[:200])
            slicer.app.processEvents()

        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            if withPyTorchExtension and wheelDir is None:
                import PyTorchUtils

                progress(_("Installing PyTorch (PyTorch extension)..."))
                PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
                plan = self.logic.dependencyPlan(refresh=True)
            dependencies.install(plan, python=self.logic.python(), wheel_dir=Path(wheelDir) if wheelDir else None, progress=progress)
        importlib.invalidate_caches()
        if self.logic.dependencyPlan(refresh=True):
            return False
        slicer.util.showStatusMessage(_("Python packages installed"), 5000)
        if dependencies.needs_restart(plan) and slicer.util.confirmYesNoDisplay(
            _("Slicer must restart to use the packages just installed. Restart now?")
        ):
            slicer.util.restart()
        return True


class BrainImageNetADLogic(ScriptedLoadableModuleLogic):
    """Gives the module's controller for the current scene; usable without the widget
    (Python console, self-test): ``BrainImageNetADLogic().controller().load_sample()``..."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._controller = None
        self._plan = None

    def dependencyPlan(self, refresh: bool = False):
        """The run-time packages this Python lacks (``BrainImageNetADLib.core.dependencies.plan``;
        empty once they are all installed), looked up once unless ``refresh``."""
        if self._plan is None or refresh or self._plan:
            from BrainImageNetADLib.core import dependencies

            self._plan = dependencies.plan()
        return self._plan

    def controller(self):
        """The ``CaseController`` of ``slicer.mrmlScene`` (its state lives in the parameter node)."""
        from BrainImageNetADLib.viewer.controller import CaseController

        if self._controller is None or self._controller.scene is not slicer.mrmlScene:
            self._controller = CaseController(slicer.mrmlScene, slicer.app.applicationLogic())
        return self._controller

    def sceneClosed(self) -> None:
        """Stop the run of the closed scene and remove its files."""
        if self._controller is not None:
            self._controller.scene_closed()

    def close(self) -> None:
        """Stop any run and remove the work folder (temporary files derived from the scan)."""
        if self._controller is not None:
            self._controller.close()
            self._controller = None

    @staticmethod
    def python() -> str:
        """The Python interpreter that runs predictions: Slicer's own (PythonSlicer)."""
        import sys

        return shutil.which("PythonSlicer") or sys.executable


class BrainImageNetADTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer ("Reload and Test"): the whole workflow on the bundled sample case."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WorkflowOnSample()

    def test_WorkflowOnSample(self):
        import tempfile
        import time

        from BrainImageNetADLib.pipeline import CaseOptions

        logic = BrainImageNetADLogic()
        if logic.dependencyPlan():
            self.skipTest("install the Python packages first (the module's Run button)")
        controller = logic.controller()
        self.delayDisplay("Loading the sample case")
        controller.load_sample()
        controller.set_threshold(0.37)
        self.delayDisplay("Running preprocessing, ensemble and occlusion (one fold)")
        controller.start(CaseOptions(fold=0), python=logic.python())
        end = time.monotonic() + 3600
        while controller.poll().state == "running":
            self.assertLess(time.monotonic(), end)
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(controller.poll().state, "done", controller.poll().message)
        prediction = controller.prediction()
        self.assertTrue(0.0 < prediction.probability < 1.0)
        self.assertEqual(len(prediction.fold_probabilities), 5)
        self.assertEqual(prediction.threshold, 0.37)
        for role in ("InputVolume", "HeatMap", "Regions", "RegionTable"):
            self.assertIsNotNone(controller.node(role), role)
        self.assertEqual(controller.set_threshold(0.0).label, "AD")
        folder = tempfile.mkdtemp()
        controller.save_scene(f"{folder}/case.mrb")
        controller.write_report(folder)
        if slicer.util.mainWindow() is not None:
            slicer.util.mainWindow().grab().save(f"{folder}/desktop.png")
        logic.close()
        self.delayDisplay(f"Test passed; scene and report in {folder}")
