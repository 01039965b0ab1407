"""The web page (``brainimagenet-ad web``): the single-case workflow in a browser, with Slicer's own
slice and 3D views rendered on this machine by trame-slicer.

One server process is one session for one page at a time: it listens on 127.0.0.1 only, accepts
only the page opened from the URL it prints (which carries this launch's secret; ``webguard``),
keeps uploads and results in a temporary folder of its own, and deletes that folder when the page
closes (and when the server stops). Nothing leaves the machine; the page needs no internet access.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from ..core.errors import BrainImageNetError
from ..core.imageheader import read_in_child
from ..core.progress import STAGE_GROUPS
from ..core.resources import resources_dir
from ..model.bundle import CARD_NAME
from ..model.prediction import fold_text, percent
from ..pipeline import HEAT_MAPS, CaseOptions
from .controller import CaseController

#: File name endings accepted for upload.
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: The 2x2 view layout: axial, coronal, sagittal and 3D.
LAYOUT_NAME = "BrainImageNetAD"


def safe_upload_name(name: str) -> str:
    """A file name for an uploaded file: its last path part, with characters outside
    ``[A-Za-z0-9._-]`` replaced; the suffix must be an image format the pipeline reads."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name.replace("\\", "/")).name).lstrip(".") or "upload"
    if not base.lower().endswith(UPLOAD_SUFFIXES):
        raise BrainImageNetError(f"{base}: upload a T1 image file ({', '.join(UPLOAD_SUFFIXES)})")
    return base


def model_choices(models_dir: Path | None = None) -> dict[str, Path]:
    """The model chooser's entries, name -> bundle folder: the bundles shipped in
    ``Resources/Models``, then those found in ``models_dir`` (the folder itself when it is a bundle,
    and its sub-folders that are, such as bundles made by ``import-keras``). A name already taken
    gets the folder's path appended."""
    folders = sorted(p for p in (resources_dir() / "Models").iterdir() if (p / CARD_NAME).is_file())
    if models_dir is not None:
        if not Path(models_dir).is_dir():
            raise BrainImageNetError(f"--models: {models_dir} is not a folder")
        candidates = [Path(models_dir), *sorted(Path(models_dir).iterdir())]
        folders += [p for p in candidates if (p / CARD_NAME).is_file()]
    choices: dict[str, Path] = {}
    for folder in folders:
        name = folder.name if folder.name not in choices else f"{folder.name} ({folder.parent})"
        choices[name] = folder.resolve()
    return choices


class WebApp:
    """The trame application: a drawer with the workflow's controls and a 2x2 grid of Slicer views.

    server: a trame server (``trame.app.get_server``); max_upload_mb: the largest accepted upload;
    heat_map: the default choice of ``HEAT_MAPS``; models_dir: a folder of more model bundles for
    the chooser (``model_choices``).
    """

    def __init__(self, server: Any, max_upload_mb: float = 200.0, heat_map: str = "ensemble", models_dir: Path | None = None) -> None:
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server
        self.server.enable_module(trame_slicer_module)
        self.max_upload_bytes = int(max_upload_mb * 1e6)
        self.slicer_app = SlicerApp()  # keep a reference: the scene lives as long as the app
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict({LAYOUT_NAME: LayoutManager.default_grid_configuration()["Quad View"]})
        self.controller = CaseController(self.slicer_app.scene, self.slicer_app.app_logic)
        self.bundles = model_choices(models_dir)
        self._poll_task: asyncio.Task | None = None
        self._clients = 0
        state = self.server.state
        state.trame__title = "BrainImageNet-AD"
        state.update(
            {
                "models": list(self.bundles),
                "model": self._model_name(),
                "heat_maps": [{"value": name, "title": label} for name, (label, *_) in HEAT_MAPS.items()],
                "heat_map": heat_map,
                "max_upload_mb": max_upload_mb,
                "input_name": "",
                "running": False,
                "force": False,
                "stages": dict.fromkeys(STAGE_GROUPS, 0),
                "stage_message": "",
                "error": "",
                "warnings": [],
                "has_result": False,
                "threshold": 0.5,
                "opacity": self.controller.state.opacity,
                "cutoff": self.controller.state.cutoff,
            }
        )
        self._show_notice()
        self.server.state.change("threshold")(self._on_threshold)
        self.server.state.change("opacity")(self._on_opacity)
        self.server.state.change("cutoff")(self._on_cutoff)
        self.server.state.change("model")(self._on_model)
        self.server.controller.on_client_connected.add(self._on_connect)
        self.server.controller.on_client_exited.add(self._on_exit)
        self.server.controller.on_server_exited.add(self._on_server_exit)
        self._build_ui()
        self.layout_manager.set_layout(LAYOUT_NAME)

    # -- state ---------------------------------------------------------------------------------
    def _show_notice(self) -> None:
        self.server.state.update({f"notice_{k}": v for k, v in self.controller.notice().items()})

    def _show_prediction(self) -> None:
        prediction = self.controller.prediction()
        state = self.server.state
        if prediction is None:
            state.has_result = False
            return
        result = self.controller.state.result
        qc = result.qc or {}
        regions = result.heat_map.regions["top_regions"] if result.heat_map else []
        state.update(
            {
                "has_result": True,
                "probability": round(prediction.probability, 4),
                "fold_probabilities": fold_text(prediction.fold_probabilities),
                "logit": f"{prediction.logit:+.3f}",
                "label": prediction.label,
                "sensitivity": percent(prediction.sensitivity),
                "specificity": percent(prediction.specificity),
                "qc_verdict": qc.get("verdict", "not run"),
                "qc_volumes": qc.get("volumes_ml") or {},
                "regions": [
                    {"rank": r["rank"], "name": r["name"], "mean": f"{r['mean']:+.4f}", "peak": f"{r['peak']:+.4f}"} for r in regions
                ],
            }
        )

    def _report(self, error: Exception) -> None:
        self.server.state.error = str(error)

    # -- actions -------------------------------------------------------------------------------
    def load_sample(self) -> None:
        """Load the bundled sample T1 as the input."""
        self.server.state.error = ""
        try:
            node = self.controller.load_sample()
        except (BrainImageNetError, FileNotFoundError) as exc:
            self._report(exc)
            return
        self.server.state.input_name = node.GetName()

    def upload(self, files: list[dict] | dict | None) -> None:
        """Load an uploaded T1 (a trame file dict: name, size, content) as the input."""
        from trame.app.file_upload import ClientFile

        state = self.server.state
        state.error = ""
        if not files:
            return
        file = ClientFile(files[0] if isinstance(files, list) else files)
        try:
            received = len(file.content or b"")
            if max(file.size or 0, received) > self.max_upload_bytes:  # the bytes received, whatever size was declared
                size = max(file.size or 0, received)
                raise BrainImageNetError(f"{file.name} is {size / 1e6:.0f} MB; the limit is {self.max_upload_bytes / 1e6:.0f} MB")
            path = self.controller.work_dir / "uploads" / safe_upload_name(file.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file.content)
            read_in_child(path)  # a file built to exhaust memory costs a capped child, not this server
            node = self.controller.load_t1(path)
        except BrainImageNetError as exc:
            self._report(exc)
            return
        state.input_name = node.GetName()

    def run(self) -> None:
        """Start a prediction on the input and poll it until it ends."""
        state = self.server.state
        try:
            self.controller.start(CaseOptions.for_heat_map(state.heat_map, bool(state.force)))
        except BrainImageNetError as exc:
            self._report(exc)
            return
        state.update({"error": "", "warnings": [], "running": True, "has_result": False, "stages": dict.fromkeys(STAGE_GROUPS, 0)})
        self._poll_task = asyncio.ensure_future(self._poll())

    def cancel(self) -> None:
        """Stop the running prediction."""
        self.controller.cancel()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(0.4)
            try:
                status = self.controller.poll()
            except BrainImageNetError as exc:
                with self.server.state:
                    self._report(exc)
                    self.server.state.running = False
                return
            with self.server.state:
                state = self.server.state
                state.stages = {k: round(100 * v) for k, v in status.stages.items()}
                state.stage_message = status.message
                if status.state == "running":
                    continue
                state.running = False
                state.warnings = self.controller.warnings
                if status.state == "failed":
                    state.error = status.message
                elif status.state == "done":
                    state.threshold = self.controller.state.threshold
                    self._show_prediction()
                    self._render()
            return

    def _on_threshold(self, threshold: float, **_: Any) -> None:
        if self.controller.state.result is not None and float(threshold) != self.controller.state.threshold:
            self.controller.set_threshold(float(threshold))
            self._show_prediction()

    def set_preset(self, name: str) -> None:
        """Set the threshold to a model-card preset ("balanced", "screening")."""
        try:
            self.controller.set_threshold_preset(name)
        except BrainImageNetError as exc:
            self._report(exc)
            return
        self.server.state.threshold = self.controller.state.threshold
        self._show_prediction()

    def _on_opacity(self, opacity: float, **_: Any) -> None:
        self.controller.set_opacity(float(opacity))
        self._render()

    def _on_cutoff(self, cutoff: float, **_: Any) -> None:
        self.controller.set_cutoff(float(cutoff))
        self._render()

    def _render(self) -> None:
        """Re-render every view (display changes that the views do not observe themselves)."""
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()

    def _model_name(self) -> str:
        current = self.controller.bundle_path().resolve()
        return next((name for name, path in self.bundles.items() if path == current), current.name)

    def _on_model(self, model: str, **_: Any) -> None:
        if model != self._model_name():
            try:
                self.controller.set_model(self.bundles[model])
            except (BrainImageNetError, FileNotFoundError) as exc:
                self._report(exc)
                return
            self._show_notice()
            self._show_prediction()

    def download_scene(self) -> Any:
        """The scene as ``.mrb`` bytes, as a download attachment."""
        path = self.controller.save_scene(self.controller.work_dir / "downloads" / "case.mrb")
        return self.server.protocol.addAttachment(path.read_bytes())

    def download_report(self) -> Any:
        """The report as one HTML file (the slices embedded), as a download attachment."""
        from .report import standalone_html

        html_path = self.controller.write_report(self.controller.work_dir / "report")
        return self.server.protocol.addAttachment(standalone_html(html_path).encode())

    # -- session -------------------------------------------------------------------------------
    def _on_connect(self, **_: Any) -> None:
        self._clients += 1

    def _on_exit(self, **_: Any) -> None:
        self._clients = max(0, self._clients - 1)
        if self._clients == 0:
            self.end_session()

    def _on_server_exit(self, **_: Any) -> None:
        self.controller.close()

    def end_session(self) -> None:
        """Stop any run, delete the session's files and start a fresh, empty session."""
        self.controller.close()
        self.slicer_app.scene.Clear(False)
        self.controller = CaseController(self.slicer_app.scene, self.slicer_app.app_logic)
        self.server.state.update({"input_name": "", "has_result": False, "error": "", "running": False, "model": self._model_name()})
        self._show_notice()

    # -- page ----------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v
        from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

        ctrl = self.server.controller
        upload_check = (
            "if ($event && [].concat($event)[0] && [].concat($event)[0].size > max_upload_mb * 1e6) "
            "{ error = [].concat($event)[0].name + ' is larger than the ' + max_upload_mb + ' MB limit'; } "
            f"else {{ trigger('{ctrl.trigger_name(self.upload)}', [$event]); }}"
        )
        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("BrainImageNet-AD")
            layout.drawer.width = 400
            with layout.toolbar:
                v.VSpacer()
                html.Span("Research and teaching only: not for diagnosis", classes="text-caption mr-4")
            with layout.drawer, v.VContainer(classes="pa-2"):
                v.VAlert(v_if=("notice_banner",), text=("notice_banner",), type="warning", density="compact", id="demo-banner")
                html.Div("Intended use: {{ notice_intended_use }}", classes="text-caption my-2", id="intended-use")
                v.VSelect(label="Model", v_model=("model",), items=("models",), density="compact", disabled=("running",), id="model")
                with v.VRow(dense=True, classes="my-1"):
                    v.VBtn(
                        "Load sample case", click=self.load_sample, disabled=("running",), id="load-sample", size="small", classes="ma-1"
                    )
                v.VFileInput(
                    label=("`Upload a T1 (${max_upload_mb} MB at most)`",),
                    accept=",".join(UPLOAD_SUFFIXES),
                    update_modelValue=upload_check,
                    density="compact",
                    disabled=("running",),
                    id="upload",
                )
                html.Div("Input: {{ input_name || 'none' }}", classes="text-body-2", id="input-name")
                v.VSelect(
                    label="Heat map", v_model=("heat_map",), items=("heat_maps",), density="compact", disabled=("running",), id="heat-map"
                )
                v.VCheckbox(label="Predict even when QC fails", v_model=("force",), density="compact", hide_details=True)
                with v.VRow(dense=True, classes="my-1"):
                    v.VBtn("Run", click=self.run, disabled=("running || !input_name",), color="primary", id="run", classes="ma-1")
                    v.VBtn("Cancel", click=self.cancel, v_if=("running",), color="error", id="cancel", classes="ma-1")
                for group in STAGE_GROUPS:
                    html.Div(group, classes="text-caption")
                    v.VProgressLinear(model_value=(f"stages['{group}']",), height=8, color="primary")
                html.Div("{{ stage_message }}", v_if=("running",), classes="text-caption", id="stage-message")
                v.VAlert(v_if=("error",), text=("error",), type="error", density="compact", id="error", classes="my-2")
                v.VAlert(v_for="w in warnings", text=("w",), type="warning", density="compact", classes="my-1")
                with html.Div(v_if=("has_result",), id="result"):
                    html.Div(
                        "AD probability <b id='probability'>{{ probability }}</b>: <b id='label'>{{ label }}</b>",
                        classes="text-h6 mt-2",
                    )
                    html.Div("Fold models: {{ fold_probabilities }}; mean logit {{ logit }}", classes="text-caption")
                    with html.Div(id="threshold"):
                        v.VSlider(label="Threshold", v_model=("threshold",), min=0, max=1, step=0.005, thumb_label=True, hide_details=True)
                    html.Div(
                        "Sensitivity <span id='sensitivity'>{{ sensitivity }}</span>, "
                        "specificity <span id='specificity'>{{ specificity }}</span> (model card)",
                        classes="text-body-2",
                    )
                    with v.VRow(dense=True, classes="my-1"):
                        v.VBtn("Balanced", click=(self.set_preset, "['balanced']"), size="small", classes="ma-1", id="preset-balanced")
                        v.VBtn("Screening", click=(self.set_preset, "['screening']"), size="small", classes="ma-1", id="preset-screening")
                    html.Div("QC: {{ qc_verdict }}", classes="text-body-2", id="qc")
                    html.Div(
                        "<span v-for='(value, key) in qc_volumes'>{{ key }} {{ value }} &nbsp;</span>",
                        classes="text-caption",
                    )
                    for name, label in (("opacity", "Opacity"), ("cutoff", "Cut-off")):
                        with html.Div(id=name):
                            v.VSlider(label=label, v_model=(name,), min=0, max=1, step=0.05, hide_details=True)
                    with v.VTable(density="compact", id="regions"):
                        html.Thead(html.Tr([html.Th("#"), html.Th("Region"), html.Th("Mean"), html.Th("Peak")]))
                        with html.Tbody():
                            with html.Tr(v_for="r in regions", key="r.rank"):
                                html.Td("{{ r.rank }}")
                                html.Td("{{ r.name }}")
                                html.Td("{{ r.mean }}")
                                html.Td("{{ r.peak }}")
                    with v.VRow(dense=True, classes="my-1"):
                        v.VBtn(
                            "Scene (.mrb)",
                            click=f"utils.download('case.mrb', trigger('{ctrl.trigger_name(self.download_scene)}'), 'application/octet-stream')",
                            size="small",
                            classes="ma-1",
                        )
                        v.VBtn(
                            "Report (HTML)",
                            click=f"utils.download('report.html', trigger('{ctrl.trigger_name(self.download_report)}'), 'text/html')",
                            size="small",
                            classes="ma-1",
                        )
            with layout.content, html.Div(classes="fill-height d-flex flex-row flex-grow-1"):
                self.layout_manager.initialize_layout_grid(layout)


def serve(
    host: str = "127.0.0.1", port: int = 8080, max_upload_mb: float = 200.0, heat_map: str = "ensemble", models_dir: Path | None = None
) -> None:
    """Start the page on ``host:port``, blocking until the server stops (Ctrl-C or SIGTERM); the
    session's files are deleted then. Prints the page's URL, which carries this launch's secret:
    only a page opened from it can use the server (``webguard``)."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who reaches this address can use the page and see its case", file=sys.stderr)

    from .webguard import MESSAGE_OVERHEAD_BYTES, new_secret, protect

    server = get_server("brainimagenet-ad", client_type="vue3")
    secret = new_secret()
    server.cli.set_defaults(authKey=secret)  # the websocket's key (wslink.hello), this launch only
    app = WebApp(server, max_upload_mb, heat_map, models_dir)
    server.controller.on_server_bind.add(lambda web_server: protect(web_server, host, app.max_upload_bytes + MESSAGE_OVERHEAD_BYTES))
    url_host = f"[{host}]" if ":" in host else host
    server.controller.on_server_ready.add(
        lambda **_: print(f"BrainImageNet-AD page: http://{url_host}:{server.port}/?secret={secret}", flush=True)
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop as Ctrl-C does, through the finally below
    try:
        server.start(host=host, port=port, open_browser=False, timeout=0)
    finally:
        app.controller.close()
