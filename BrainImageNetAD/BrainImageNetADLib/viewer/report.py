"""The case report: an HTML page with PNG slices and a JSON file, written from the scene's nodes.

The report carries the prediction, the QC verdict, the regions of the occlusion map and the
model's intended-use statement. It adds no patient identifier: no names, dates of birth, file
names or paths of the input, only the date of the analysis.
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.atomic import write_bytes_atomic, write_json_atomic
from ..model.prediction import Prediction, fold_text, percent
from ..pipeline import CaseResult
from .mrml import volume_node_array

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
SLICES_PNG = "report_slices.png"


def report_content(result: CaseResult, prediction: Prediction, notice: dict[str, Any]) -> dict[str, Any]:
    """The report's facts as a JSON-ready dict (no identifiers of the patient or of the input)."""
    heat_map = result.heat_map
    regions = heat_map.regions if heat_map else {}
    qc = result.qc or {}
    return {
        "product": f"BrainImageNet-AD {__version__}",
        "analysis_date": datetime.date.today().isoformat(),
        "model": notice["name"],
        "banner": notice["banner"],
        "intended_use": notice["intended_use"],
        "probability": prediction.probability,
        "logit": prediction.logit,
        "fold_probabilities": prediction.fold_probabilities,
        "threshold": prediction.threshold,
        "label": prediction.label,
        "sensitivity": prediction.sensitivity,
        "specificity": prediction.specificity,
        "qc": {k: qc.get(k) for k in ("verdict", "failures", "warnings", "volumes_ml")},
        "heat_map": {
            "kind": heat_map.kind if heat_map else "occlusion",
            "method": heat_map.method if heat_map else None,
            "units": heat_map.units if heat_map else None,
            "centre": heat_map.centre if heat_map else 0.0,
            "hippocampal": regions.get("hippocampal", []),
            "top_regions": regions.get("top_regions", []),
        },
    }


def _canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder (I, J, K) voxels to the closest RAS axis order (voxel axes ~ R, A, S)."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, orientation)


def slices_png(t1: Any, heat: Any | None, labels: np.ndarray | None, cutoff: float, centre: float = 0.0) -> bytes:
    """Axial, coronal and sagittal slices (radiological: patient's right on the left) through the
    centre of the labelled regions (else the volume's centre): the T1 in grey, the heat map where
    its distance from ``centre`` (its value of no effect) reaches ``cutoff`` times the largest,
    the region outlines. Returns PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1_data, affine = volume_node_array(t1)
    t1_data = _canonical(t1_data, affine)
    heat_data = None if heat is None else _canonical(volume_node_array(heat)[0], affine) - centre
    label_data = None if labels is None else _canonical(labels, affine)
    if label_data is not None and label_data.any():
        middle = np.rint(np.argwhere(label_data > 0).mean(axis=0)).astype(int)
    else:
        middle = np.array(t1_data.shape) // 2
    low, high = np.percentile(t1_data[t1_data > 0], [1, 99.5]) if (t1_data > 0).any() else (0, 1)
    peak = float(np.abs(heat_data).max()) if heat_data is not None and heat_data.any() else 1.0
    cuts = [("Axial", 2), ("Coronal", 1), ("Sagittal", 0)]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    for ax, (title, axis) in zip(axes, cuts, strict=True):

        def cut(volume: np.ndarray, axis: int = axis) -> np.ndarray:
            plane = np.take(volume, middle[axis], axis=axis).T  # rows: the higher axis (A or S)
            return plane[:, ::-1] if axis != 0 else plane  # radiological: patient's right on the left

        ax.imshow(cut(t1_data), cmap="gray", vmin=low, vmax=high, origin="lower")
        if heat_data is not None:
            plane = cut(heat_data)
            ax.imshow(
                np.ma.masked_where(np.abs(plane) < cutoff * peak, plane + centre),
                cmap="coolwarm",
                vmin=centre - peak,
                vmax=centre + peak,
                origin="lower",
                alpha=0.7,
            )
        if label_data is not None and cut(label_data).any():
            ax.contour(cut(label_data) > 0, levels=[0.5], colors="lime", linewidths=1.0, origin="lower")
        ax.set_title(title, color="white")
        ax.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor="black")
    plt.close(figure)
    return buffer.getvalue()


def _html(content: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{r['rank']}</td><td>{e(r['name'])}</td><td>{r['mean']:+.4f}</td><td>{r['peak']:+.4f}</td></tr>"
        for r in content["heat_map"]["hippocampal"] + content["heat_map"]["top_regions"]
    )
    heat_map = content["heat_map"]
    if heat_map["kind"] == "risk":
        heading, value = "Risk map", "AD probability"
        colour = (
            f"Colour: the AD probability of the model's risk template (a brain it scores at {heat_map['centre']:.2f}) with one cube "
            "replaced by this person's grey matter (red: this person's grey matter there raises the probability; blue: lowers it)."
        )
    else:
        heading, value = "Occlusion map", "drop"
        colour = (
            "Colour: change of the AD probability when a cube of grey matter is masked (red: the region supports the AD "
            "probability; blue: masking it raised the probability)."
        )
    qc = content["qc"]
    banner = f'<p class="banner">{e(content["banner"])}</p>' if content["banner"] else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>BrainImageNet-AD report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}} .banner{{background:#b00020;color:white;padding:.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:.2em .5em}}</style></head><body>
<h1>BrainImageNet-AD report</h1>
{banner}
<p><b>Intended use:</b> {e(content["intended_use"])}</p>
<p>Model: {e(content["model"])}. Analysis date: {e(content["analysis_date"])}. {e(content["product"])}.</p>
<h2>Result</h2>
<p>AD probability <b>{content["probability"]:.3f}</b> (folds: {fold_text(content["fold_probabilities"])}; mean logit
{content["logit"]:+.3f}).
At threshold {content["threshold"]:.3f}: <b>{e(content["label"])}</b>; sensitivity {percent(content["sensitivity"])},
specificity {percent(content["specificity"])} (from the model card's validation).</p>
<p>Quality control: {e(str(qc.get("verdict")))}. {e("; ".join((qc.get("failures") or []) + (qc.get("warnings") or [])))}</p>
<h2>{heading}</h2>
<p>{colour} Green outlines: hippocampus and parahippocampal gyrus.</p>
<img src="{SLICES_PNG}" alt="Slices through the hippocampus with the {heading.lower()}" style="width:100%">
<table><tr><th>Rank</th><th>Region (AAL)</th><th>Mean {value}</th><th>Peak {value}</th></tr>{rows}</table>
</body></html>
"""


def write_report(
    folder: str | Path,
    result: CaseResult,
    prediction: Prediction,
    notice: dict[str, Any],
    t1: Any,
    heat: Any | None,
    regions: Any | None,
    cutoff: float = 0.2,
) -> Path:
    """Write ``report.html``, ``report.json`` and ``report_slices.png`` into ``folder`` (each
    atomically) from the run's ``result`` and the scene's T1, heat-map and region nodes (native
    space); return the HTML path."""
    from .scene import segmentation_labels

    folder = Path(folder)
    content = report_content(result, prediction, notice)
    labels = None if regions is None else segmentation_labels(regions, t1)
    write_bytes_atomic(folder / SLICES_PNG, slices_png(t1, heat, labels, cutoff, content["heat_map"]["centre"]))
    write_json_atomic(folder / REPORT_JSON, content)
    return write_bytes_atomic(folder / REPORT_HTML, _html(content).encode("utf-8"))


def standalone_html(html_path: str | Path) -> str:
    """The report page of ``write_report`` as one self-contained HTML text (the PNG embedded), for
    a download."""
    import base64

    html_path = Path(html_path)
    png = base64.b64encode((html_path.parent / SLICES_PNG).read_bytes()).decode()
    return html_path.read_text(encoding="utf-8").replace(f'src="{SLICES_PNG}"', f'src="data:image/png;base64,{png}"')
