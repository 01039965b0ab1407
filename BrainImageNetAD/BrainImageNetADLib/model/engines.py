"""Inference engines for the fold networks: PyTorch (the reference and the fallback) and OpenVINO.

The OpenVINO graph is written here from our own modules with OpenVINO's operation set (no model
converter, no tracing): each convolution's batch norm and, in Inception-ResNet blocks, the
residual scale are folded into its weights and bias, and TensorFlow 'same' padding becomes the
convolution's explicit padding; the fold networks of an ensemble share one graph. Building and
compiling take about 0.1 s for the paper-size ensemble, so nothing is stored on disk; the compiled
graphs are kept per process, keyed by the fold files' sha256, so that a viewer switching between
bundles builds each one once. OpenVINO's model converter (``openvino.convert_model``) is not
used: it reports usage over the network unless the user opts out, and nothing here may reach the
internet.

Precision: ``f32`` (default; OpenVINO is told so explicitly, because on CPUs with bf16 units its
default is bf16) gives PyTorch's probabilities to about 1e-7; ``bf16`` is 2-5x faster on such CPUs
but moves the probabilities (1e-4 to 3e-4 in ``bench predict``, 2e-3 for the shipped
demonstration model on the sample case), so it is only used when asked for.

Measured with ``bench predict`` (5 folds, 2 threads, one subject): see docs/performance.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import InputError
from .networks import ADTransferNet, Concat, ConvBN, InceptionResNetBlock, InceptionResNetV2, Stem

#: Engine names for ``--engine``.
ENGINES = ("torch", "openvino")
PRECISIONS = ("f32", "bf16")

#: The fold networks of an ensemble as one function: inputs (N, C, 96, 120, 86) float32 ->
#: outputs (N, F) float64 (logits of each fold network).
EnsembleRunner = Callable[[np.ndarray], np.ndarray]


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def default_engine(device: torch.device) -> str:
    """``openvino`` on a CPU where it is installed, else ``torch``."""
    return "openvino" if device.type == "cpu" and openvino_available() else "torch"


def resolve_engine(engine: str | None, device: torch.device) -> str:
    """Check an ``--engine`` choice against the device and the installed packages (None: default)."""
    if engine is None:
        return default_engine(device)
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "openvino":
        if device.type != "cpu":
            raise InputError(f"the openvino engine runs on the CPU; use --engine torch for device {device}")
        if not openvino_available():
            raise InputError("the openvino engine needs the Python package openvino (pip install openvino)")
    return engine


def check_precision(precision: str) -> None:
    """InputError unless ``precision`` is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


# -- OpenVINO graph --------------------------------------------------------------------------------
class _Graph:
    """Emits OpenVINO operations for our modules, tracking the static spatial size."""

    def __init__(self) -> None:
        import openvino.opset13 as ops

        self.ops = ops

    def conv_bn(
        self, x: Any, module: ConvBN, size: tuple[int, int, int], scale: float = 1.0, relu: bool | None = None
    ) -> tuple[Any, tuple]:
        ops = self.ops
        weight, bias = (t.numpy() for t in module.folded(scale))
        stride = module.stride
        if module.same:  # the network's own TF 'same' rule; F.pad order: last axis first, (begin, end)
            pads = module._same_padding(size)
            begin, end = [pads[4], pads[2], pads[0]], [pads[5], pads[3], pads[1]]
        else:
            begin = end = [0, 0, 0]
        out = tuple((n + b + e - k) // stride + 1 for n, b, e, k in zip(size, begin, end, module.kernel_size, strict=True))
        node = ops.convolution(x, ops.constant(weight), [stride] * 3, begin, end, [1, 1, 1])
        node = ops.add(node, ops.constant(bias.reshape(1, -1, 1, 1, 1)))
        if module.activation if relu is None else relu:
            node = ops.relu(node)
        return node, out

    def max_pool(self, x: Any, module: nn.MaxPool3d, size: tuple[int, int, int]) -> tuple[Any, tuple]:
        k, s = module.kernel_size, module.stride
        k = k if isinstance(k, int) else k[0]
        s = s if isinstance(s, int) else s[0]
        node = self.ops.max_pool(x, [s] * 3, [1, 1, 1], [0, 0, 0], [0, 0, 0], [k] * 3, "floor").output(0)
        return node, tuple((n - k) // s + 1 for n in size)

    def module(self, x: Any, module: nn.Module, size: tuple[int, int, int]) -> tuple[Any, tuple]:
        if isinstance(module, ConvBN):
            return self.conv_bn(x, module, size)
        if isinstance(module, nn.MaxPool3d):
            return self.max_pool(x, module, size)
        if isinstance(module, nn.Sequential):
            for child in module:
                x, size = self.module(x, child, size)
            return x, size
        if isinstance(module, Concat):
            outputs = [self.module(x, branch, size) for branch in module.branches]
            return self.ops.concat([node for node, _ in outputs], 1), outputs[0][1]
        if isinstance(module, Stem):
            for child in (module.conv1, module.conv2, module.mixed1, module.mixed2, module.mixed3):
                x, size = self.module(x, child, size)
            return x, size
        if isinstance(module, InceptionResNetBlock):
            mixed, _ = self.module(x, module.mixed, size)
            up, _ = self.conv_bn(mixed, module.up, size, scale=module.scale, relu=False)
            node = self.ops.add(x, up)
            return (self.ops.relu(node) if module.activation else node), size
        raise TypeError(f"no OpenVINO translation for {type(module).__name__}")

    def head(self, x: Any, head: nn.Sequential) -> Any:
        ops = self.ops
        node = ops.reduce_mean(x, ops.constant(np.array([2, 3, 4], dtype=np.int64)), False)
        for layer in head:
            if isinstance(layer, nn.Linear):
                node = ops.matmul(node, ops.constant(layer.weight.detach().float().numpy()), False, True)
                node = ops.add(node, ops.constant(layer.bias.detach().float().numpy()))
            elif isinstance(layer, nn.ELU):
                node = ops.elu(node, float(layer.alpha))
            elif not isinstance(layer, nn.Dropout):
                raise TypeError(f"no OpenVINO translation for {type(layer).__name__}")
        return ops.squeeze(node, ops.constant(np.array([1], dtype=np.int64)))


def openvino_model(models: list[nn.Module], in_channels: int, spatial: tuple[int, int, int]) -> Any:
    """One OpenVINO model for fold networks in eval mode that share their input: input
    (N, C, *spatial) float32 with any N, one output (N,) per network (logits, or years for the age
    network). One graph rather than one per fold lets OpenVINO reuse the activation memory across
    folds: for the paper-size five-fold ensemble 2.0 GB of resident memory instead of 4.1 GB."""
    import openvino as ov

    graph = _Graph()
    x = graph.ops.parameter([-1, in_channels, *spatial], np.float32, name="maps")
    outputs = []
    for model in models:
        node, size = graph.module(x, model.stem, tuple(spatial))
        if isinstance(model, ADTransferNet):
            node, size = graph.module(node, model.top, size)
        elif isinstance(model, InceptionResNetV2):
            for part in (model.block_a, model.reduction_a, model.block_b, model.reduction_b, model.block_c, model.conv_7b):
                node, size = graph.module(node, part, size)
        else:
            raise TypeError(f"no OpenVINO translation for {type(model).__name__}")
        outputs.append(graph.head(node, model.head))
    return ov.Model(outputs, [x], "brainimagenet_ensemble")


#: Compiled OpenVINO ensembles of this process, by (weights key, threads, precision), most
#: recently used last; a few are kept so that a viewer switching between bundles builds each once.
_COMPILED: OrderedDict[tuple[str, int, str], Any] = OrderedDict()
_COMPILED_KEPT = 4


def openvino_runner(
    models: list[nn.Module], key: str, in_channels: int, spatial: tuple[int, int, int], threads: int, precision: str = "f32"
) -> EnsembleRunner:
    """The fold networks compiled by OpenVINO as one function (N, C, *spatial) -> (N, F). ``key``
    identifies the weights (the fold files' sha256 digests): a second call with the same key,
    threads and precision reuses the compiled graph. ``threads`` 0 lets OpenVINO choose."""
    import openvino as ov

    check_precision(precision)
    cache_key = (f"{key}:{in_channels}:{spatial}", threads, precision)
    if cache_key in _COMPILED:
        _COMPILED.move_to_end(cache_key)
    else:
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        _COMPILED[cache_key] = ov.Core().compile_model(openvino_model(models, in_channels, spatial), "CPU", config)
        while len(_COMPILED) > _COMPILED_KEPT:
            _COMPILED.popitem(last=False)
    compiled = _COMPILED[cache_key]

    def run(x: np.ndarray) -> np.ndarray:
        result = compiled(np.ascontiguousarray(x, dtype=np.float32))
        return np.stack([np.asarray(result[output], dtype=np.float64).reshape(-1) for output in compiled.outputs], axis=1)

    return run


def torch_runner(models: list[nn.Module], device: torch.device, precision: str = "f32") -> EnsembleRunner:
    """The fold networks on PyTorch (channels_last_3d, inference mode; ``bf16``: autocast) as one
    function (N, C, ...) -> (N, F)."""
    check_precision(precision)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device).contiguous(memory_format=torch.channels_last_3d)
            return np.stack([model(batch).double().cpu().numpy().reshape(-1) for model in models], axis=1)

    return run


def state_digest(model: nn.Module) -> str:
    """sha256 of a network's tensors (a cache key for networks that do not come from a bundle file)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
