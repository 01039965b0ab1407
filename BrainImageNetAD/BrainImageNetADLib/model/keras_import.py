"""Import the published BrainImageNet Keras models (HDF5) into our PyTorch networks.

The authors trained their networks with Keras 2 (TensorFlow backend) and saved whole models as
HDF5 files. Those files are read here with ``h5py`` only: never with Keras' ``load_model`` and
never through pickle (their residual ``Lambda`` layers are stored as Python 3.5 bytecode, which
must not be executed). Only weight arrays and the JSON model description are read.

How Keras layers map to ours (checked against the authors' ``Inception_resnet_v2_3D.py`` and
training scripts):

- Unnamed layers are numbered by Keras in creation order (``conv3d_1``, ``conv3d_2``, ... and
  ``batch_normalization_1``, ...; ``conv3d``, ``conv3d_1``, ... in later Keras versions). Sorted by
  that number they follow the order in which our modules are registered: stem, then each block's
  branches left to right, reductions, and so on.
- Named layers: the residual projections ``block35_N_conv``, ``block17_N_conv``, ``block8_N_conv``
  (1x1x1 convolutions with a bias, no batch norm), ``conv_7b`` with ``conv_7b_bn`` (sex network),
  ``conv1``-``conv3`` with ``conv1_bn``-``conv3_bn`` (the AD network's top), and the one ``Dense``.
- Conv3D kernels (kd, kh, kw, in, out) become (out, in, kd, kh, kw): Keras' channels-last input
  (N, 96, 120, 86, C) and ours (N, C, 96, 120, 86) share the order of the spatial axes.
- Batch norms were built with ``scale=False`` (no gamma): our weight is set to 1; beta, moving mean
  and moving variance are copied; epsilon is Keras' 1e-3, as in ``networks.ConvBN``.
- Dense kernels (in, out) are transposed to (out, in).

Every tensor's shape is checked, every weighted layer of the file must be used, and, where the
file holds its model description, every convolution's strides and padding and every batch norm's
epsilon must agree with ours. Errors name the file and the layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import InputError
from .bundle import save_bundle, sha256_file, write_input_mask, write_risk_template
from .networks import PRESETS, ConvBN, build_network

#: Keras' default batch-norm epsilon, used by the authors' networks and by ours.
KERAS_BN_EPSILON = 1e-3
_UNNAMED = {"conv": re.compile(r"^conv3d(?:_(\d+))?$"), "bn": re.compile(r"^batch_normalization(?:_(\d+))?$")}
_DENSE = re.compile(r"^(?:dense(?:_\d+)?|predictions)$")
_BLOCK_CONV = re.compile(r"^(block35|block17|block8)_(\d+)_conv$")
_AD_TOP = {"top.1": "conv1", "top.2": "conv2", "top.3.branches.1": "conv3"}
_BLOCK_TYPES = {"block_a": "block35", "block_b": "block17", "block_c": "block8"}


@dataclass
class KerasLayer:
    """One layer of a Keras HDF5 file that holds weights: its name, its arrays by short name
    (``kernel``, ``bias``, ``beta``, ``gamma``, ``moving_mean``, ``moving_variance``) and its
    configuration from the file's model description (empty when the file has none)."""

    name: str
    weights: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class KerasFile:
    """The weighted layers of one Keras HDF5 file (model or weights-only)."""

    path: Path
    layers: dict[str, KerasLayer]
    keras_version: str

    def fail(self, message: str) -> InputError:
        return InputError(f"{self.path.name}: {message}")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _model_layers_config(attrs: Any) -> dict[str, dict[str, Any]]:
    """Layer name -> config from the JSON ``model_config`` attribute, if any,
    including the layers of models nested in the model (as multi-GPU training saved them)."""
    if "model_config" not in attrs:
        return {}
    found: dict[str, dict[str, Any]] = {}

    def walk(model: dict[str, Any]) -> None:
        for layer in model.get("config", {}).get("layers", []):
            if "config" in layer and "name" in layer["config"]:
                found[layer["config"]["name"]] = layer["config"]
                walk(layer)

    walk(json.loads(_text(attrs["model_config"])))
    return found


def read_keras_file(path: str | Path) -> KerasFile:
    """Read the weight arrays of a Keras HDF5 model or weights file with h5py (no Keras, no pickle).

    Raises InputError naming the file when it is missing, not HDF5, truncated or not a Keras file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise InputError(f"{path.name}: an HDF5 file, but not a Keras model or weights file (no layer_names)")
            configs = _model_layers_config(f.attrs)
            version = _text(f.attrs.get("keras_version", root.attrs.get("keras_version", "unknown")))
            layers: dict[str, KerasLayer] = {}
            for raw_name in root.attrs["layer_names"]:
                group = root[_text(raw_name)]
                for raw_weight in group.attrs.get("weight_names", []):
                    # "conv3d_1/kernel:0": the layer, then the weight. A nested model's group (a
                    # multi-GPU save) holds the weights of all its layers, named the same way.
                    weight = _text(raw_weight)
                    parts = weight.split("/")
                    name = parts[-2] if len(parts) > 1 else _text(raw_name)
                    if name not in layers:
                        layers[name] = KerasLayer(name, {}, configs.get(name, {}))
                    layers[name].weights[parts[-1].split(":")[0]] = np.asarray(group[weight], dtype=np.float32)
    except InputError:
        raise
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"{path.name}: not a readable Keras HDF5 file ({type(exc).__name__}: {exc})") from None
    if not layers:
        raise InputError(f"{path.name}: the file holds no weights")
    return KerasFile(path, layers, version)


def detect_architecture(keras_file: KerasFile) -> str:
    """``ad_transfer`` when the file has the AD network's top (``conv1``-``conv3``), ``sex`` when
    it has the base network's ``conv_7b``; InputError otherwise."""
    names = set(keras_file.layers)
    if {"conv1", "conv2", "conv3"} <= names:
        return "ad_transfer"
    if "conv_7b" in names:
        return "sex"
    raise keras_file.fail("neither the BrainImageNet AD network (layers conv1-conv3) nor its sex base network (layer conv_7b)")


def _conv_slots(model: nn.Module) -> list[tuple[str, ConvBN]]:
    """(Keras layer name, or '' for an unnamed conv3d, ConvBN) in our registration order, which
    is the order in which the authors' code creates the layers."""
    slots: list[tuple[str, ConvBN]] = []
    for name, module in model.named_modules():
        if not isinstance(module, ConvBN):
            continue
        if name.endswith(".up"):
            group, index = name.split(".")[:2]  # e.g. block_a.0.up: the first Inception-ResNet-A block
            slots.append((f"{_BLOCK_TYPES[group]}_{int(index) + 1}_conv", module))
        elif name == "conv_7b":
            slots.append(("conv_7b", module))
        elif name in _AD_TOP:
            slots.append((_AD_TOP[name], module))
        else:
            slots.append(("", module))
    return slots


def _sorted_unnamed(keras_file: KerasFile, kind: str, needed: int | None = None) -> list[str]:
    """The file's unnamed conv3d (``kind`` 'conv') or batch-norm ('bn') layers in creation order.

    With ``needed``: the first ``needed`` of them must be numbered without a gap (Keras numbers
    the layers of a session consecutively); a gap names the missing layer. Layers beyond them
    are left for the check of unused layers."""
    pattern = _UNNAMED[kind]
    prefix = "conv3d" if kind == "conv" else "batch_normalization"
    found = sorted((int(m.group(1) or 0), name) for name in keras_file.layers if (m := pattern.match(name)))
    if needed is not None:
        first = found[0][0] if found else 0
        for expected, (number, _) in enumerate(found[:needed], start=first):
            if number != expected:
                raise keras_file.fail(f"layer {prefix}_{expected} is missing (the file is truncated or of another architecture)")
        if len(found) < needed:
            raise keras_file.fail(f"too few {prefix} layers: the network needs {needed}, the file has {len(found)}")
    return [name for _, name in found]


def _block_conv_names(keras_file: KerasFile) -> dict[str, list[str]]:
    """Named residual projections of the file by block type, sorted by block number."""
    found: dict[str, list[tuple[int, str]]] = {}
    for name in keras_file.layers:
        if m := _BLOCK_CONV.match(name):
            found.setdefault(m.group(1), []).append((int(m.group(2)), name))
    return {kind: [name for _, name in sorted(items)] for kind, items in found.items()}


def _take(keras_file: KerasFile, name: str, used: set[str]) -> KerasLayer:
    if name not in keras_file.layers:
        raise keras_file.fail(f"layer {name} is missing (the file is truncated or of another architecture)")
    used.add(name)
    return keras_file.layers[name]


def _array(keras_file: KerasFile, layer: KerasLayer, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in layer.weights:
        raise keras_file.fail(f"layer {layer.name} has no {key} (it holds {sorted(layer.weights)})")
    value = layer.weights[key]
    if tuple(value.shape) != shape:
        raise keras_file.fail(f"layer {layer.name}: {key} has shape {tuple(value.shape)}, the network expects {shape}")
    if not np.isfinite(value).all():
        raise keras_file.fail(f"layer {layer.name}: {key} holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(value))


def _check_conv_config(keras_file: KerasFile, layer: KerasLayer, module: ConvBN) -> None:
    config = layer.config
    if not config:
        return
    strides = config.get("strides")
    if strides is not None and any(int(s) != module.stride for s in strides):
        raise keras_file.fail(f"layer {layer.name}: strides {strides}, the network has {module.stride}")
    padding = config.get("padding")
    if padding is not None and (padding == "same") != module.same:
        raise keras_file.fail(f"layer {layer.name}: padding {padding!r}, the network uses {'same' if module.same else 'valid'}")
    if config.get("data_format", "channels_last") != "channels_last":
        raise keras_file.fail(f"layer {layer.name}: data format {config['data_format']!r}; only channels_last is supported")


def _load_conv(keras_file: KerasFile, conv_name: str, bn_name: str | None, module: ConvBN, used: set[str]) -> None:
    conv = _take(keras_file, conv_name, used)
    _check_conv_config(keras_file, conv, module)
    out_c, in_c, kd, kh, kw = module.conv.weight.shape
    kernel = _array(keras_file, conv, "kernel", (kd, kh, kw, in_c, out_c))
    with torch.no_grad():
        module.conv.weight.copy_(kernel.permute(4, 3, 0, 1, 2))
        if module.conv.bias is not None:
            module.conv.bias.copy_(_array(keras_file, conv, "bias", (out_c,)))
        elif "bias" in conv.weights:
            raise keras_file.fail(f"layer {conv_name} has a bias, but the network's convolution there has none")
    if module.bn is None:
        return
    if bn_name is None:
        raise keras_file.fail(f"no batch norm found after layer {conv_name}")
    bn = _take(keras_file, bn_name, used)
    epsilon = bn.config.get("epsilon", KERAS_BN_EPSILON)
    if abs(float(epsilon) - module.bn.eps) > 1e-9:
        raise keras_file.fail(f"layer {bn_name}: batch-norm epsilon {epsilon}, the network uses {module.bn.eps}")
    with torch.no_grad():
        gamma = bn.weights.get("gamma")
        module.bn.weight.copy_(_array(keras_file, bn, "gamma", (out_c,)) if gamma is not None else torch.ones(out_c))
        module.bn.bias.copy_(_array(keras_file, bn, "beta", (out_c,)))
        module.bn.running_mean.copy_(_array(keras_file, bn, "moving_mean", (out_c,)))
        module.bn.running_var.copy_(_array(keras_file, bn, "moving_variance", (out_c,)))
        if (module.bn.running_var < 0).any():
            raise keras_file.fail(f"layer {bn_name}: negative moving variance")


def _load_into(keras_file: KerasFile, model: nn.Module) -> None:
    """Copy the file's weights into ``model`` (in place); InputError on any mismatch."""
    used: set[str] = set()
    slots = _conv_slots(model)
    unnamed = [module for name, module in slots if name == ""]
    unnamed_convs = iter(_sorted_unnamed(keras_file, "conv", len(unnamed)))
    unnamed_bns = iter(_sorted_unnamed(keras_file, "bn", sum(module.bn is not None for module in unnamed)))
    block_convs = _block_conv_names(keras_file)
    counters: dict[str, int] = {}
    for keras_name, module in slots:
        if keras_name == "":
            conv_name = next(unnamed_convs)
            bn_name = next(unnamed_bns) if module.bn is not None else None
        elif (m := _BLOCK_CONV.match(keras_name)) is not None:
            kind = m.group(1)
            index = counters.get(kind, 0)
            counters[kind] = index + 1
            names = block_convs.get(kind, [])
            if index >= len(names):
                raise keras_file.fail(f"layer {keras_name} is missing: the file has {len(names)} {kind} blocks")
            conv_name, bn_name = names[index], None
        else:
            conv_name, bn_name = keras_name, f"{keras_name}_bn"
        _load_conv(keras_file, conv_name, bn_name, module, used)
    head = model.head[-1]
    dense_names = [name for name in keras_file.layers if _DENSE.match(name)]
    if len(dense_names) != 1:
        raise keras_file.fail(f"expected one Dense output layer, found {len(dense_names)} ({dense_names})")
    dense = _take(keras_file, dense_names[0], used)
    if dense.config.get("activation", "sigmoid") != "sigmoid":
        raise keras_file.fail(f"layer {dense.name}: activation {dense.config['activation']!r}; the network's output is a sigmoid")
    with torch.no_grad():
        head.weight.copy_(_array(keras_file, dense, "kernel", (head.in_features, head.out_features)).T)
        head.bias.copy_(_array(keras_file, dense, "bias", (head.out_features,)))
    extra = [name for name in keras_file.layers if name not in used]
    if extra:
        raise keras_file.fail(f"layer {extra[0]} is not part of the network ({len(extra)} unused layers with weights)")


def _preset_candidates(keras_file: KerasFile, architecture: str) -> list[str]:
    """Presets whose first convolution has the file's number of filters and, for the base
    network, whose block counts match the file's residual projections."""
    first = _sorted_unnamed(keras_file, "conv")
    if not first or "kernel" not in keras_file.layers[first[0]].weights:
        raise keras_file.fail("layer conv3d_1 (the first convolution) is missing")
    filters = keras_file.layers[first[0]].weights["kernel"].shape[-1]
    blocks = tuple(len(_block_conv_names(keras_file).get(kind, [])) for kind in ("block35", "block17", "block8"))
    return [
        name
        for name, preset in PRESETS.items()
        if max(4, int(round(64 * preset.width))) == filters and (architecture != "sex" or preset.blocks == blocks)
    ]


def import_keras_model(path: str | Path, architecture: str | None = None) -> tuple[nn.Module, str, KerasFile]:
    """Build our network from a Keras HDF5 file of the authors' AD (``ad_transfer``) or sex
    (``sex``) network. Returns (network in eval mode, preset name, the file read).

    ``architecture`` None detects it from the layer names. Raises InputError naming the file and
    the layer on any mismatch.
    """
    keras_file = read_keras_file(path)
    found = detect_architecture(keras_file)
    if architecture is not None and architecture != found:
        raise keras_file.fail(f"holds a {found} network, expected {architecture}")
    presets = _preset_candidates(keras_file, found)
    if not presets:
        raise keras_file.fail(f"layer sizes match no known preset of the {found} network ({', '.join(PRESETS)})")
    in_channels = int(keras_file.layers[_sorted_unnamed(keras_file, "conv")[0]].weights["kernel"].shape[3])
    model = build_network(found, presets[0], in_channels)
    _load_into(keras_file, model)
    return model.eval(), presets[0], keras_file


#: Where the published files lie in the authors' Docker image ``cgyan/brainimagenet`` (its
#: Dockerfile builds on ``tensorflow/tensorflow:1.13.1-py3-jupyter``, whose working folder is /tf,
#: and copies the prediction scripts, the models and the mask there).
DOCKER_FOLDER = "/tf"
AUTHORS = "Bin Lu, Hui-Xian Li, Zhi-Kai Chang, ..., Chao-Gan Yan (The R-fMRI Lab, Institute of Psychology, Chinese Academy of Sciences)"
PAPER = "Lu B, Li H-X, Chang Z-K, et al. A Practical Alzheimer Disease Classifier via Brain Imaging-Based Deep Learning on 85,721 Samples"
TERMS = (
    "Third-party weights, supplied by the user and converted on the user's machine. The authors publish them for "
    "research purposes only, 'under patent protection, all rights reserved' (commercial use: contact Prof. Chao-Gan "
    "Yan). The converted files must not be redistributed; this bundle is for the user's own research use."
)
#: The paper's figures for the AD network, quoted as published (GMD+GMV input).
REPORTED_AD = {
    "status": "reported by the authors, not verified here",
    "source": "Lu et al. (paper, Results and Table 2)",
    "adni_leave_sites_out": {"accuracy": 0.913, "auc": 0.962, "sensitivity": 0.848, "specificity": 0.943, "samples": 6857},
    "aibl": {"accuracy": 0.942, "auc": 0.97, "sensitivity": 0.881, "specificity": 0.954, "samples": 669},
    "miriad": {"accuracy": 0.936, "auc": 0.993, "sensitivity": 0.897, "specificity": 1.0, "samples": 644},
    "oasis": {"accuracy": 0.905, "auc": 0.969, "sensitivity": 0.903, "specificity": 0.905, "samples": 1123},
    "mci_predicted_ad": {"pMCI": 0.652, "sMCI": 0.204, "auc": 0.82},
    "aibl_at_threshold_0.2": {"sensitivity": 0.921, "specificity": 0.885},
}
REPORTED_SEX = {
    "status": "reported by the authors, not verified here",
    "source": "Lu et al. (paper, Results)",
    "leave_datasets_out": {"accuracy": 0.949, "auc": 0.981, "samples": 85721},
}
#: The authors' input conventions, each with where it was established.
CONVENTIONS_SOURCES = {
    "channels": "wc1 (GMD) as channel 0 and mwc1 (GMV) as channel 1: local/y_Predict_AD.py and y_Predict_Sex.py fill Data_all[..., 0] and [..., 1] so",
    "grid_and_crop": "SPM/DARTEL 121x145x121 1.5 mm MNI maps cropped [12:108, 13:133, 16:102] in the files' voxel order (nibabel get_data), "
    "as in every script of theirs; our model grid is that crop in the same voxel order (SPM's, x from right to left)",
    "mask": "the maps are multiplied by the mask Reslice_BrainMask_05_91x109x91.img before the crop in local/y_Predict_AD.py, "
    "local/y_Predict_Sex.py and web/Brain_Prediction_AD.py (training used Reslice_GreyMask_02); the file lies beside the scripts "
    "in the Docker image",
    "round_float16": "the scripts store the inputs in a float16 array (np.zeros(..., dtype=np.float16)) before predict, "
    "so every value is rounded to float16",
    "output": "Dense(1, sigmoid): AD probability (1 = AD, 0 = healthy); their README advises 0.3 for screening",
}


def read_authors_mask(path: str | Path) -> np.ndarray:
    """The authors' mask file (Analyze .img/.hdr or NIfTI on the 121x145x121 grid, or the model
    grid) as a (96, 120, 86) float32 array, taken voxel for voxel as their scripts do (they multiply
    arrays, whatever the header says)."""
    from ..core import grid
    from .maps import load_nifti

    data, _ = load_nifti(path, "mask")
    data = data[..., 0] if data.ndim == 4 else data
    if data.shape == grid.MNI_SHAPE:
        data = grid.crop_to_model_grid(data)
    if data.shape != grid.MODEL_SHAPE or not np.isfinite(data).all() or data.max() <= 0:
        raise InputError(f"{Path(path).name}: a mask must be a finite, non-empty 121x145x121 (or 96x120x86) image, got {data.shape}")
    return np.ascontiguousarray(data, dtype=np.float32)


def approximate_brain_mask() -> np.ndarray:
    """Our stand-in for the authors' brain mask: MNI152 2009 grey + white matter prior >= 0.5,
    on the model grid (96, 120, 86), 0/1 float32."""
    from ..core import grid
    from ..core.templates import mni_templates_on_grid

    templates = mni_templates_on_grid()
    return grid.crop_to_model_grid(((templates["GM"] + templates["WM"]) >= 0.5).astype(np.float32)).copy()


def _card(name: str, architecture: str, preset: str, sources: list[KerasFile], mask_entry: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__
    from ..core import grid

    ad = architecture == "ad_transfer"
    return {
        "name": name,
        "version": "imported",
        "architecture": architecture,
        "preset": preset,
        "classes": ["NC", "AD"] if ad else ["female", "male"],
        "input": {
            "channels": ["GMD", "GMV"],
            "grid": "MNI152, 1.5 mm, SPM/DARTEL 121x145x121 grid cropped [12:108, 13:133, 16:102]",
            "shape": list(grid.MODEL_SHAPE),
            "affine": grid.MODEL_AFFINE.tolist(),
            "conventions": {"mask": mask_entry, "round_float16": True, "sources": CONVENTIONS_SOURCES},
        },
        "training_data": (
            "ADNI (2,186 AD and 4,671 NC scans), five folds leaving sites out, after pretraining as a sex classifier on 85,721 "
            "scans of 34 datasets, as reported by the authors"
            if ad
            else "85,721 scans of 34 datasets, five folds leaving datasets out (this file: trained on all), as reported by the authors"
        ),
        "demo": False,
        "trained": True,
        "intended_use": (
            f"Third-party {'AD' if ad else 'sex'} classifier of {AUTHORS}, imported from the user's copy of their published Keras "
            "files. Research use only; all rights reserved by the authors. Its answers are only meaningful on maps that "
            "reproduce SPM12's (see docs/preprocessing.md for the fidelity figures). Not a medical device; not for diagnosis or any clinical decision."
        ),
        "licence": TERMS,
        "third_party": {
            "authors": AUTHORS,
            "paper": PAPER,
            "repository": "Chaogan-Yan/BrainImageNet (code; the trained models ship in the Docker image cgyan/brainimagenet)",
            "terms": TERMS,
            "redistribution": "not allowed",
            "source_files": [{"file": s.path.name, "sha256": sha256_file(s.path), "keras_version": s.keras_version} for s in sources],
            "converted_with": f"brainimagenet-ad {__version__} import-keras",
        },
        "reported_performance": REPORTED_AD if ad else REPORTED_SEX,
        "operating_points": [],
        "threshold_presets": {"balanced": 0.5, "screening": 0.3} if ad else {"balanced": 0.5},
        "folds": [{"source": s.path.name} for s in sources],
    }


def _add_risk_template(bundle_dir: Path, files: tuple[str | Path, str | Path]) -> None:
    """Store the authors' risk template maps ``files`` (GMD, GMV) in the AD bundle, with the
    ensemble's AD probability for them."""
    from .ensemble import Ensemble
    from .maps import load_model_input

    ensemble = Ensemble.from_bundle(bundle_dir, engine="torch")
    template, _ = load_model_input(dict(zip(("GMD", "GMV"), files, strict=True)), ensemble.card.channels)
    score = float(ensemble.predict_proba(template[None])[0][0])
    sources = ", ".join(f"{Path(f).name} (sha256 {sha256_file(Path(f))})" for f in files)
    write_risk_template(bundle_dir, template, score, f"the authors' risk template {sources}, supplied by the user")


def import_keras_bundle(
    ad_files: list[str | Path],
    out: str | Path,
    base_file: str | Path | None = None,
    mask_file: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    risk_template: tuple[str | Path, str | Path] | None = None,
) -> Path:
    """Convert the authors' Keras HDF5 files into a model bundle at ``out``; return ``out``.

    ``ad_files``: the AD fold models (an ensemble; usually 5); ``base_file``: their sex network,
    written as a bundle of its own (``out`` itself when no AD file is given, ``out/base`` otherwise,
    usable as ``brainimagenet-train transfer --base``); ``mask_file``: their
    ``Reslice_BrainMask_05_91x109x91.img`` (without it, ``approximate_brain_mask`` stands in and the
    card says so); ``risk_template``: their template maps (GMD, GMV), e.g.
    ``Template_wc1_ADNC5050_*.nii`` and ``Template_mwc1_ADNC5050_*.nii`` (121x145x121), stored in the
    AD bundle with the ensemble's score for them (without them the bundle makes no risk maps). The bundle is assembled in a temporary folder beside ``out`` and moved into place
    at the end: on any error (InputError naming the file and the layer) nothing is left behind.
    """
    import shutil
    import tempfile

    if not ad_files and base_file is None:
        raise InputError("give the AD fold files (--ad) and/or the sex base network (--base)")
    if risk_template is not None and not ad_files:
        raise InputError("a risk template belongs to the AD models: give their files (--ad) with it")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists (--overwrite replaces it)")
    ad_models = [import_keras_model(path, "ad_transfer") for path in ad_files]
    base = import_keras_model(base_file, "sex") if base_file is not None else None
    presets = {preset for _, preset, _ in ad_models}
    if len(presets) > 1:
        raise InputError(f"the AD files hold networks of different sizes ({sorted(presets)})")
    if mask_file is not None:
        mask, source = read_authors_mask(mask_file), f"{Path(mask_file).name} (sha256 {sha256_file(Path(mask_file))}), supplied by the user"
    else:
        mask = approximate_brain_mask()
        source = (
            "APPROXIMATION: the authors' Reslice_BrainMask_05_91x109x91.img was not supplied; MNI152 2009 grey + white matter "
            "prior >= 0.5 stands in (import again with --mask to use theirs)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        targets: list[tuple[Path, str, list[tuple[nn.Module, str, KerasFile]]]] = []
        if ad_models:
            targets.append((staging, "ad_transfer", ad_models))
        if base is not None:
            targets.append((staging / "base" if ad_models else staging, "sex", [base]))
        for folder, architecture, models in targets:
            folder.mkdir(parents=True, exist_ok=True)
            mask_entry = write_input_mask(folder, mask, source)
            default_name = out.name if folder == staging else f"{out.name}-base"
            card = _card(name or default_name, architecture, models[0][1], [m[2] for m in models], mask_entry)
            if architecture == "ad_transfer" and base is not None:
                card["base_bundle"] = "base"
            save_bundle(folder, [m[0] for m in models], card)
            if architecture == "ad_transfer" and risk_template is not None:
                _add_risk_template(folder, risk_template)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
