"""BrainImageNetAD: the 3D Slicer module (Module, Widget, Logic, Test).

The widget is a thin Qt layer; everything it does is in ``BrainImageNetADLib`` (plain Python,
tested without Slicer). Research use only: not a medical device.
"""

import logging
import os
from typing import Annotated

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Python packages the library needs, as (import name, pip requirement).
REQUIRED_PACKAGES = [("torch", "torch"), ("safetensors", "safetensors"), ("nibabel", "nibabel"), ("scipy", "scipy")]


class BrainImageNetAD(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainImageNet AD")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainImageNet-AD contributors"]
        self.parent.helpText = _(
            "Alzheimer's disease classifier for brain MRI: a 5-fold ensemble of 3D Inception-ResNet-V2 "
            "transfer networks (Lu et al., 2022) applied to grey-matter density and volume maps. "
            "<b>Research and teaching only; not for diagnosis.</b> "
            "See the extension's README for the command line and the model cards."
        )
        self.parent.acknowledgementText = _(
            "Method: Lu B. et al., A Practical Alzheimer Disease Classifier via Brain Imaging-Based Deep "
            "Learning on 85,721 Samples, J Big Data 2022. This open re-implementation shares no code or weights with it."
        )


@parameterNodeWrapper
class BrainImageNetADParameterNode:
    """State of the module, saved with the scene.

    gmdVolume, gmvVolume: grey-matter density and volume maps on the MNI 1.5 mm grid.
    modelPath: folder of the model bundle ("" = the shipped default).
    threshold: decision threshold on the AD probability.
    """

    gmdVolume: slicer.vtkMRMLScalarVolumeNode
    gmvVolume: slicer.vtkMRMLScalarVolumeNode
    modelPath: str = ""
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class BrainImageNetADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._prediction = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainImageNetAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainImageNetADLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.gmdVolume and self._parameterNode.gmvVolume)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Compute the AD probability") if ready else _("Select GMD and GMV volumes")

    def onApplyButton(self) -> None:
        if not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Prediction failed."), waitCursor=True):
            p = self._parameterNode
            self._prediction = self.logic.predict(p.gmdVolume, p.gmvVolume, p.modelPath or None, p.threshold)
            self.showPrediction(self._prediction)

    def onThresholdChanged(self, value: float) -> None:
        if self._prediction is not None:
            self._prediction = self.logic.classify(self._prediction, self._parameterNode.modelPath or None, value)
            self.showPrediction(self._prediction)

    def showPrediction(self, prediction) -> None:
        def percent(value):
            return _("not recorded") if value is None else f"{100 * value:.1f}%"

        self.ui.probabilityLabel.text = f"{prediction.probability:.3f} ({prediction.label})"
        self.ui.foldsLabel.text = ", ".join(f"{p:.3f}" for p in prediction.fold_probabilities)
        self.ui.sensitivityLabel.text = percent(prediction.sensitivity)
        self.ui.specificityLabel.text = percent(prediction.specificity)
        self.ui.intendedUseLabel.text = prediction.intended_use


def ensureDependencies() -> bool:
    """Check the Python packages the library needs; offer to install the missing ones."""
    import importlib.util

    missing = [req for name, req in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _("BrainImageNet AD needs these Python packages: {packages}. Install them now (internet access needed)?").format(
            packages=", ".join(missing)
        ),
        _("Offline? Install them with pip into Slicer's Python from local wheel files, then restart Slicer."),
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
    return True


class BrainImageNetADLogic(ScriptedLoadableModuleLogic):
    """Runs the library's ensemble on volume nodes; usable without the widget (Python console, tests)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._ensembles = {}

    def getParameterNode(self):
        return BrainImageNetADParameterNode(super().getParameterNode())

    def ensemble(self, bundlePath=None):
        """The (cached) ensemble of a bundle folder; None selects the shipped default bundle."""
        from BrainImageNetADLib.ensemble import Ensemble
        from BrainImageNetADLib.resources import default_bundle

        path = os.fspath(bundlePath or default_bundle())
        if path not in self._ensembles:
            self._ensembles[path] = Ensemble.from_bundle(path)
        return self._ensembles[path]

    def predict(self, gmdVolume, gmvVolume, bundlePath=None, threshold=0.5):
        """AD prediction (``BrainImageNetADLib.ensemble.Prediction``) from GMD and GMV volume nodes."""
        from BrainImageNetADLib.mrml import model_input_from_nodes

        ensemble = self.ensemble(bundlePath)
        x = model_input_from_nodes({"GMD": gmdVolume, "GMV": gmvVolume}, ensemble.card.channels)
        return ensemble.predict(x, threshold)

    def classify(self, prediction, bundlePath, threshold):
        """The same probabilities at another threshold: reads the model card, runs no network."""
        from BrainImageNetADLib.ensemble import classify

        return classify(prediction.probability, prediction.fold_probabilities, self.ensemble(bundlePath).card, threshold)


class BrainImageNetADTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: loads the bundled sample case and runs the ensemble."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PredictSample()

    def test_PredictSample(self):
        from BrainImageNetADLib.resources import sample_maps

        self.delayDisplay("Loading the sample case")
        maps = sample_maps()
        gmd = slicer.util.loadVolume(str(maps["GMD"]))
        gmv = slicer.util.loadVolume(str(maps["GMV"]))
        logic = BrainImageNetADLogic()
        prediction = logic.predict(gmd, gmv, None, 0.5)
        self.assertTrue(0.0 < prediction.probability < 1.0)
        self.assertEqual(len(prediction.fold_probabilities), 5)
        self.assertEqual(prediction.label, "AD" if prediction.probability >= 0.5 else "NC")
        again = logic.classify(prediction, None, 0.0)
        self.assertEqual(again.label, "AD")
        self.delayDisplay("Test passed")
