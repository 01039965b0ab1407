"""BrainImageNetTraining: the headless training module of BrainImageNet-AD.

Runs in Slicer's Python (``Slicer --no-main-window --python-script ...``) and in plain Python
(``brainimagenet-train``); all work is in ``BrainImageNetTrainingLib``. From Slicer's Python::

    import BrainImageNetTraining
    logic = BrainImageNetTraining.BrainImageNetTrainingLogic()
    manifest = logic.synthesize("/data/synth", subjects=300, sites=10)
    logic.train("sex", manifest, "/data/runs/base", preset="tiny", folds=0, epochs=3)
    logic.train("ad", manifest, "/data/runs/ad", preset="tiny", base="/data/runs/base", freeze_stem=True)
    logic.evaluate(["/data/runs/ad/bundle"], "/data/independent/manifest.csv", "/data/eval")
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
        from BrainImageNetADLib.core import dependencies

        if dependencies.python_problem() or dependencies.plan():
            notice = dependencies.python_problem() or _(
                "Python packages needed: {packages}. Install them with the BrainImageNet AD module (its Run button)."
            ).format(packages=", ".join(dependencies.plan().names()))
            label = qt.QLabel(notice)
            label.wordWrap = True
            self.layout.addWidget(label)
        form = qt.QFormLayout()
        self.layout.addLayout(form)
        self.outputEdit = qt.QLineEdit(os.path.join(slicer.app.temporaryPath, "BrainImageNetAD"))
        form.addRow(_("Output folder:"), self.outputEdit)
        self.aalEdit = qt.QLineEdit()
        self.aalEdit.placeholderText = _("optional: MRIcron's aal.nii.gz, to rebuild the atlas too")
        form.addRow(_("AAL atlas source:"), self.aalEdit)
        self.resourcesButton = qt.QPushButton(_("Write the quick sample maps"))
        form.addRow(self.resourcesButton)
        self.resourcesButton.connect("clicked(bool)", self.onWriteResources)
        self.layout.addStretch(1)

    def onWriteResources(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to write the resources."), waitCursor=True):
            written = self.logic.writeResources(self.outputEdit.text, self.aalEdit.text or None)
            slicer.util.infoDisplay(_("Written: {paths}").format(paths=", ".join(map(str, written))))


class BrainImageNetTrainingLogic(ScriptedLoadableModuleLogic):
    """Calls ``BrainImageNetTrainingLib``; usable from Slicer's Python without the widget."""

    def writeResources(self, outputDir, aalSource=None):
        """Write the quick sample maps (``Sample/``) under ``outputDir`` and, given MRIcron's
        ``aal.nii.gz`` as ``aalSource``, the AAL atlas (``Atlas/``); return the paths written."""
        from BrainImageNetADLib.explain.atlas import build_atlas
        from BrainImageNetTrainingLib.sample import make_colin27_sample

        written = list(make_colin27_sample(os.path.join(outputDir, "Sample")).values())
        if aalSource:
            written.append(build_atlas(os.path.join(outputDir, "Atlas"), aalSource))
        return written

    def synthesize(self, outputDir, subjects=200, sites=6, datasets=3, seed=0):
        """Write a synthetic cohort (maps and manifest.csv) to ``outputDir``; return the manifest path."""
        from BrainImageNetTrainingLib.synth import write_cohort

        return write_cohort(outputDir, subjects, sites, datasets, seed)

    def train(self, task, manifestPath, runDir, progress=None, shouldCancel=None, **settings):
        """Train (or resume) ``task`` ('sex', 'age' or 'ad') on a manifest into ``runDir``.

        ``settings`` are the fields of ``BrainImageNetTrainingLib.training.TrainConfig`` (preset,
        epochs, base, freeze_stem, ...). ``progress(stage, fraction)`` and ``shouldCancel()`` let a
        caller show progress and stop the run. Returns the pooled metrics.
        """
        from BrainImageNetTrainingLib.training import TrainConfig, train

        return train(TrainConfig(task=task, **settings), manifestPath, runDir, progress, shouldCancel)

    def evaluate(self, bundleDirs, manifestPath, outputDir, threshold=0.5, device="cpu"):
        """Score independent scans with AD bundles; return the evaluation (Table 2 rows, analyses)."""
        from BrainImageNetTrainingLib.evaluation import evaluate

        return evaluate(bundleDirs, manifestPath, outputDir, threshold, device)

    def groupOcclusion(self, bundleDir, manifestPath, outputDir, fold=None, maxScans=None, progress=None, shouldCancel=None):
        """Group-level occlusion map (accuracy drop per cube) over independent AD and NC scans;
        return its summary (see ``BrainImageNetTrainingLib.group_occlusion``)."""
        from BrainImageNetTrainingLib.group_occlusion import group_occlusion

        return group_occlusion(
            bundleDir, manifestPath, outputDir, fold=fold, max_scans=maxScans, progress=progress, should_cancel=shouldCancel
        )

    def makeDemo(self, outputDir, progress=None, shouldCancel=None, **settings):
        """Make the demonstration ensemble from synthetic cohorts (``settings``: fields of
        ``BrainImageNetTrainingLib.demo.DemoSettings``); resumable. Returns ``demo.json``'s content."""
        from BrainImageNetTrainingLib.demo import DemoSettings, run_demo

        return run_demo(outputDir, DemoSettings(**settings), progress, shouldCancel)


class BrainImageNetTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WriteResources()
        self.test_TrainOnSyntheticCohort()

    def test_WriteResources(self):
        outputDir = os.path.join(slicer.app.temporaryPath, "BrainImageNetTrainingTest")
        written = BrainImageNetTrainingLogic().writeResources(outputDir)
        self.assertEqual(len(written), 2)
        self.assertTrue(all(os.path.isfile(path) for path in written))
        self.delayDisplay("Test passed")

    def test_TrainOnSyntheticCohort(self):
        from BrainImageNetADLib.model.bundle import read_card

        root = os.path.join(slicer.app.temporaryPath, "BrainImageNetTrainingTest")
        logic = BrainImageNetTrainingLogic()
        manifest = logic.synthesize(os.path.join(root, "cohort"), subjects=16, sites=4, datasets=2, seed=1)
        settings = dict(preset="tiny", epochs=1, batch_size=4, validation=2)
        logic.train("sex", manifest, os.path.join(root, "base"), folds=0, **settings)
        logic.train("ad", manifest, os.path.join(root, "ad"), folds=2, base=os.path.join(root, "base"), freeze_stem=True, **settings)
        card = read_card(os.path.join(root, "ad", "bundle"))
        self.assertTrue(card.trained)
        self.assertEqual(len(card.data["folds"]), 2)
        self.delayDisplay("Test passed")
