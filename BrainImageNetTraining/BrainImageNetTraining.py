"""BrainImageNetTraining: the headless training module of BrainImageNet-AD.

Runs in Slicer's Python (``Slicer --no-main-window --python-script ...``) and in plain Python
(``brainimagenet-train``); all work is in ``BrainImageNetTrainingLib``.
"""

import os

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


class BrainImageNetTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainImageNet Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainImageNet-AD contributors"]
        self.parent.helpText = _(
            "Headless training tools of BrainImageNet-AD: model bundles and sample data for the "
            "BrainImageNet AD module. Long runs belong on the command line (brainimagenet-train)."
        )
        self.parent.acknowledgementText = _("Method: Lu B. et al., J Big Data 2022.")


class BrainImageNetTrainingWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = BrainImageNetTrainingLogic()
        form = qt.QFormLayout()
        self.layout.addLayout(form)
        self.outputEdit = qt.QLineEdit(os.path.join(slicer.app.temporaryPath, "BrainImageNetAD"))
        form.addRow(_("Output folder:"), self.outputEdit)
        self.placeholderButton = qt.QPushButton(_("Write placeholder sample and untrained bundle"))
        form.addRow(self.placeholderButton)
        self.placeholderButton.connect("clicked(bool)", self.onPlaceholder)
        self.layout.addStretch(1)

    def onPlaceholder(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to write the placeholder."), waitCursor=True):
            bundle = self.logic.writePlaceholder(self.outputEdit.text)
            slicer.util.infoDisplay(_("Bundle written to {path}").format(path=bundle))


class BrainImageNetTrainingLogic(ScriptedLoadableModuleLogic):
    """Calls ``BrainImageNetTrainingLib``; usable from Slicer's Python without the widget."""

    def writePlaceholder(self, outputDir, preset="tiny", seed=0):
        """Write the Colin27 sample maps and an untrained bundle under ``outputDir``; return the bundle path."""
        from BrainImageNetTrainingLib.placeholder import make_colin27_sample, make_untrained_bundle

        make_colin27_sample(os.path.join(outputDir, "Sample"))
        return make_untrained_bundle(os.path.join(outputDir, "Models", f"placeholder-{preset}"), preset, seed=seed)


class BrainImageNetTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WritePlaceholderBundle()

    def test_WritePlaceholderBundle(self):
        from BrainImageNetADLib.bundle import load_fold_models

        outputDir = os.path.join(slicer.app.temporaryPath, "BrainImageNetTrainingTest")
        bundle = BrainImageNetTrainingLogic().writePlaceholder(outputDir)
        card, models = load_fold_models(bundle)
        self.assertFalse(card.trained)
        self.assertEqual(len(models), 5)
        self.delayDisplay("Test passed")
