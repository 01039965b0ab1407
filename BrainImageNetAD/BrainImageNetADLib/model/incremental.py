"""Incremental inference: the network's output for many copies of one input that differ from
it only inside small boxes (occlusion cubes), recomputing only what each box changes.

The unoccluded pass records every layer's input and output. For a batch of boxes, each layer
then computes only the outputs whose receptive field meets the changed region (a patch of
fixed size per layer, shifted to stay inside the volume), reading the unchanged context from the
recorded input (Nakandala et al., SIGMOD 2019). Where the changed region covers a whole layer
the patch is the whole layer, which is plain computation. Results equal the full forward pass up
to floating-point rounding (the same weights and arithmetic on the same values).

Arithmetic (each step measured by ``bench occlusion``): activations are kept channels-last
(``torch.channels_last_3d``, the layout oneDNN's 3D convolutions and max pooling run fastest in),
each batch norm is folded into its convolution (``ConvBN.folded``) for the recorded pass and the
patches alike, and branches that read the same window of the same input (a stride-2 convolution
and max pooling side by side) gather it once.

Supported modules: ``ConvBN``, ``MaxPool3d`` (no padding), ``Concat``, ``Sequential``, ``Stem``,
``InceptionResNetBlock`` and ``Dropout`` (eval mode) - everything below the global pooling of
the networks in ``networks``. Shapes: volumes (N, C, D, H, W); boxes in voxels of each layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .networks import ADTransferNet, Concat, ConvBN, InceptionResNetBlock, InceptionResNetV2, Stem


@dataclass
class Patch:
    """Values of a batch of boxes of one layer: ``data`` (B, C, *size) and ``start`` (B, 3), the
    first voxel of each box in that layer's coordinates."""

    data: torch.Tensor
    start: torch.Tensor

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[2:])  # type: ignore[return-value]


def gather(base: torch.Tensor, start: torch.Tensor, size: tuple[int, ...], patch: Patch | None) -> torch.Tensor:
    """Boxes (B, C, *size) starting at ``start`` (B, 3) read from ``base`` (1, C, D, H, W) with
    zeros outside it, overwritten by ``patch``'s values where the boxes overlap; in ``base``'s
    memory layout."""
    batch = start.shape[0]
    layout = torch.channels_last_3d if _channels_last(base) else torch.contiguous_format
    out = torch.empty((batch, base.shape[1], *size), dtype=base.dtype, device=base.device, memory_format=layout)
    full = base.shape[2:]
    for b in range(batch):
        s = start[b].tolist()
        src = tuple(slice(max(s[d], 0), min(s[d] + size[d], full[d])) for d in range(3))
        if any(sl.stop - sl.start < size[d] for d, sl in enumerate(src)):
            out[b].zero_()
        if all(sl.stop > sl.start for sl in src):
            dst = tuple(slice(sl.start - s[d], sl.stop - s[d]) for d, sl in enumerate(src))
            out[(b, slice(None), *dst)] = base[(0, slice(None), *src)]
        if patch is not None:
            p = patch.start[b].tolist()
            lo = [max(s[d], p[d]) for d in range(3)]
            hi = [min(s[d] + size[d], p[d] + patch.size[d]) for d in range(3)]
            if all(h > low for low, h in zip(lo, hi, strict=True)):
                dst = tuple(slice(lo[d] - s[d], hi[d] - s[d]) for d in range(3))
                src_p = tuple(slice(lo[d] - p[d], hi[d] - p[d]) for d in range(3))
                out[(b, slice(None), *dst)] = patch.data[(b, slice(None), *src_p)]
    return out


def _channels_last(x: torch.Tensor) -> bool:
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d)


def _chain(module: nn.Module) -> list[nn.Module]:
    """The layers a sequential module applies, in order."""
    if isinstance(module, Stem):
        return [module.conv1, module.conv2, module.mixed1, module.mixed2, module.mixed3]
    return list(module)


def _fit(lo: torch.Tensor, hi: torch.Tensor, limit: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """One box size per dimension covering every [lo, hi] (inclusive), starts shifted inside [0, limit)."""
    size = tuple(min(int((hi[:, d] - lo[:, d]).max()) + 1, limit[d]) for d in range(3))
    top = torch.tensor([limit[d] - size[d] for d in range(3)])
    return torch.minimum(lo, top).clamp(min=0), size  # type: ignore[return-value]


class IncrementalNetwork:
    """One network (``ADTransferNet`` or ``InceptionResNetV2``) in eval mode, with the recorded
    unoccluded pass of one input, answering outputs for batches of changed boxes.

    ``macs`` counts the multiply-accumulates of the convolutions actually computed, so that the
    share of a naive recomputation can be reported. ``channels_last`` and ``fold_batch_norm``
    (both on by default) choose the arithmetic; off, every layer runs as the module itself does
    (the baseline ``bench occlusion`` compares against).
    """

    def __init__(self, network: nn.Module, channels_last: bool = True, fold_batch_norm: bool = True) -> None:
        if not isinstance(network, ADTransferNet | InceptionResNetV2):
            raise TypeError(f"incremental inference supports the networks of this package, not {type(network).__name__}")
        self.network = network.eval()
        self.layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.folded = {id(m): m.folded() for m in network.modules() if isinstance(m, ConvBN)} if fold_batch_norm else {}
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.windows: dict[tuple, torch.Tensor] = {}
        self.macs = 0

    def _conv(self, module: ConvBN, x: torch.Tensor, padding: bool) -> torch.Tensor:
        """``module`` applied to ``x`` (N, C, D, H, W); ``padding`` False: no padding (a patch's
        window already holds its context)."""
        conv = module.conv
        if padding and module.dynamic_padding:
            x = F.pad(x, module._same_padding(tuple(x.shape[2:])))
        pad = conv.padding if padding else 0
        if id(module) in self.folded:
            weight, bias = self.folded[id(module)]
            y = F.conv3d(x, weight, bias, conv.stride, pad)
        else:
            y = F.conv3d(x, conv.weight, conv.bias, conv.stride, pad)
            if module.bn is not None:
                y = module.bn(y)
        return F.relu_(y) if module.activation else y

    def _trunk(self) -> list[nn.Module]:
        n = self.network
        if isinstance(n, ADTransferNet):
            return [n.stem, n.top]
        return [n.stem, n.block_a, n.reduction_a, n.block_b, n.reduction_b, n.block_c, n.conv_7b]

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.head(features.mean(dim=(2, 3, 4))).squeeze(1)

    # -- the unoccluded pass -------------------------------------------------------------------
    def record(self, x: torch.Tensor) -> torch.Tensor:
        """Run the unoccluded input ``x`` (1, C, D, H, W), keep every layer's input and output;
        return the network's output (1,) (a logit for the classifiers)."""
        self.inputs.clear()
        self.outputs.clear()
        with torch.inference_mode():
            y = x.contiguous(memory_format=self.layout)
            for module in self._trunk():
                y = self._full(module, y)
            return self._head(y)

    def _full(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self.inputs[id(module)] = x
        if isinstance(module, ConvBN):
            y = self._conv(module, x, padding=True)
        elif isinstance(module, nn.MaxPool3d | nn.Dropout):
            y = module(x)
        elif isinstance(module, nn.Sequential | Stem):
            y = x
            for child in _chain(module):
                y = self._full(child, y)
        elif isinstance(module, Concat):
            y = torch.cat([self._full(branch, x) for branch in module.branches], dim=1)
        elif isinstance(module, InceptionResNetBlock):
            r = self._full(module.up, self._full(module.mixed, x))
            y = x + module.scale * r
            y = F.relu(y) if module.activation else y
        else:
            raise TypeError(f"incremental inference does not support {type(module).__name__}")
        self.outputs[id(module)] = y
        return y

    def naive_macs(self) -> int:
        """Multiply-accumulates of the convolutions of one full forward pass (after ``record``)."""
        total = 0
        for module in self.network.modules():
            if isinstance(module, ConvBN) and id(module) in self.outputs:
                conv = module.conv
                kernel = conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
                total += self.outputs[id(module)][0, 0].numel() * conv.out_channels * conv.in_channels * kernel
        return total

    # -- boxes ------------------------------------------------------------------------------------
    def forward_patches(self, patch: Patch) -> torch.Tensor:
        """Outputs (B,) of the network for B inputs that equal the recorded one except inside
        ``patch`` (input coordinates)."""
        self.windows.clear()
        patch = Patch(patch.data.contiguous(memory_format=self.layout), patch.start)
        with torch.inference_mode():
            for module in self._trunk():
                patch = self._patch(module, patch)
            self.windows.clear()
            last = self.outputs[id(self._trunk()[-1])]
            full = gather(last, torch.zeros_like(patch.start), tuple(last.shape[2:]), patch)
            return self._head(full)

    def _patch(self, module: nn.Module, patch: Patch) -> Patch:
        if isinstance(module, ConvBN | nn.MaxPool3d):
            return self._leaf(module, patch)
        if isinstance(module, nn.Dropout):
            return patch
        if isinstance(module, nn.Sequential | Stem):
            for child in _chain(module):
                patch = self._patch(child, patch)
            return patch
        if isinstance(module, Concat):
            parts = [(branch, self._patch(branch, patch)) for branch in module.branches]
            first = parts[0][1]
            if all(p.size == first.size and torch.equal(p.start, first.start) for _, p in parts):  # branches of one geometry
                return Patch(torch.cat([p.data for _, p in parts], dim=1), first.start)
            start, size = self._union([p for _, p in parts], tuple(self.outputs[id(module)].shape[2:]))
            data = [gather(self.outputs[id(branch)], start, size, p) for branch, p in parts]
            return Patch(torch.cat(data, dim=1), start)
        if isinstance(module, InceptionResNetBlock):
            r = self._patch(module.up, self._patch(module.mixed, patch))
            start, size = self._union([patch, r], tuple(self.outputs[id(module)].shape[2:]))
            x = gather(self.inputs[id(module)], start, size, patch)
            y = x + module.scale * gather(self.outputs[id(module.up)], start, size, r)
            return Patch(F.relu(y) if module.activation else y, start)
        raise TypeError(f"incremental inference does not support {type(module).__name__}")

    @staticmethod
    def _union(patches: list[Patch], limit: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        lo = torch.stack([p.start for p in patches]).min(dim=0).values
        hi = torch.stack([p.start + torch.tensor(p.size) - 1 for p in patches]).max(dim=0).values
        return _fit(lo, hi, limit)

    def _leaf(self, module: ConvBN | nn.MaxPool3d, patch: Patch) -> Patch:
        x = self.inputs[id(module)]
        out_size = tuple(self.outputs[id(module)].shape[2:])
        if isinstance(module, ConvBN):
            kernel, stride = torch.tensor(module.kernel_size), module.stride
            if module.dynamic_padding:
                pads = module._same_padding(tuple(x.shape[2:]))
                before = torch.tensor([pads[4], pads[2], pads[0]])
            else:
                before = torch.tensor(module.conv.padding)
        else:
            kernel, stride, before = torch.tensor([module.kernel_size] * 3), module.stride, torch.zeros(3, dtype=torch.long)
        a = patch.start
        b = patch.start + torch.tensor(patch.size) - 1
        lo = torch.div(a + before - kernel + 1 + stride - 1, stride, rounding_mode="floor").clamp(min=0)
        hi = torch.div(b + before, stride, rounding_mode="floor").clamp(max=torch.tensor(out_size) - 1)
        lo = torch.minimum(lo, hi)
        start, size = _fit(lo, hi, out_size)
        window_start = start * stride - before
        window = tuple(int((size[d] - 1) * stride + kernel[d]) for d in range(3))
        key = (id(x), id(patch), window_start.numpy().tobytes(), window)
        if key not in self.windows:
            self.windows[key] = gather(x, window_start, window, patch)
        w = self.windows[key]
        if isinstance(module, nn.MaxPool3d):
            return Patch(F.max_pool3d(w, module.kernel_size, module.stride), start)
        y = self._conv(module, w, padding=False)
        conv = module.conv
        self.macs += y[:, 0].numel() * conv.out_channels * conv.in_channels * int(kernel.prod())
        return Patch(y, start)
