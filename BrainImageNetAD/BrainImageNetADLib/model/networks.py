"""3D Inception-ResNet-V2 networks of Lu et al. (sex/age base models) and the AD transfer network.

All networks take a float tensor of shape (N, C, 96, 120, 86): C input channels (GMD and GMV, or
one of them) on the model grid (see ``grid``), and return one value per sample, shape (N,):
a logit for the classifiers (probability = sigmoid(logit)) or the predicted value for the age
regressor. The layout follows the authors' 3D Keras model: 'valid' and TensorFlow-style 'same'
padding, batch normalisation after every convolution but the residual projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

KernelSize = int | tuple[int, int, int]


@dataclass(frozen=True)
class Preset:
    """Width and depth of a network: ``width`` scales every filter count, ``blocks`` gives the
    number of Inception-ResNet-A, -B and -C blocks."""

    name: str
    width: float
    blocks: tuple[int, int, int]


PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", 1.0, (5, 10, 5)),
    "small": Preset("small", 0.25, (2, 4, 2)),
    "tiny": Preset("tiny", 0.0625, (1, 1, 1)),
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name`` (``paper``, ``small`` or ``tiny``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def _triple(k: KernelSize) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(k)  # type: ignore[return-value]


class ConvBN(nn.Module):
    """Conv3d, then BatchNorm3d and ReLU (Keras ``conv3d_bn``), or Conv3d with a bias alone.

    Batch norm: epsilon 1e-3 as in Keras; running-statistics momentum 0.1 (PyTorch's default),
    because Keras's 0.99 (0.01 here) needs thousands of iterations to settle on small cohorts.

    ``padding`` is ``'same'`` (TensorFlow rule: output size ceil(input / stride), extra padding
    at the end) or ``'valid'``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: KernelSize,
        stride: int = 1,
        padding: str = "same",
        activation: bool = True,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = stride
        self.same = padding == "same"
        symmetric = self.same and stride == 1 and all(k % 2 == 1 for k in self.kernel_size)
        self.dynamic_padding = self.same and not symmetric
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            self.kernel_size,
            stride=stride,
            padding=tuple(k // 2 for k in self.kernel_size) if symmetric else 0,
            bias=not batch_norm,
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.1) if batch_norm else None
        self.activation = activation

    def _same_padding(self, size: tuple[int, ...]) -> tuple[int, ...]:
        pads: list[int] = []
        for n, k in zip(reversed(size), reversed(self.kernel_size), strict=True):
            total = max((math.ceil(n / self.stride) - 1) * self.stride + k - n, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)

    def folded(self, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (out, in, kd, kh, kw) and bias (out,) of one convolution equal to this one with
        its batch norm (eval mode) and an output ``scale`` folded in: computed in float64, rounded
        to float32 once. The ReLU and the 'same' padding are not included."""
        weight = self.conv.weight.detach().double()
        bias = self.conv.bias.detach().double() if self.conv.bias is not None else weight.new_zeros(weight.shape[0])
        if self.bn is not None:
            factor = self.bn.weight.detach().double() / torch.sqrt(self.bn.running_var.double() + self.bn.eps)
            weight = weight * factor[:, None, None, None, None]
            bias = (bias - self.bn.running_mean.double()) * factor + self.bn.bias.detach().double()
        return (weight * scale).float(), (bias * scale).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            x = F.pad(x, self._same_padding(tuple(x.shape[2:])))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class Concat(nn.Module):
    """Runs branches on the same input and concatenates their outputs along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def _scaled(width: float, filters: int) -> int:
    return max(4, int(round(filters * width)))


class Stem(nn.Module):
    """The stem: (N, C, 96, 120, 86) -> (N, 512*width, 21, 27, 19) for the paper sizes."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        w = lambda f: _scaled(width, f)  # noqa: E731
        self.conv1 = ConvBN(in_channels, w(64), 3, padding="valid")
        self.conv2 = ConvBN(w(64), w(96), 3)
        self.mixed1 = Concat(nn.MaxPool3d(3, stride=2), ConvBN(w(96), w(96), 3, stride=2, padding="valid"))
        c1 = w(96) + w(96)
        self.mixed2 = Concat(
            nn.Sequential(ConvBN(c1, w(96), 1), ConvBN(w(96), w(128), 3, padding="valid")),
            nn.Sequential(
                ConvBN(c1, w(96), 1),
                ConvBN(w(96), w(96), (1, 7, 1)),
                ConvBN(w(96), w(96), (1, 1, 7)),
                ConvBN(w(96), w(96), (7, 1, 1)),
                ConvBN(w(96), w(128), 3, padding="valid"),
            ),
        )
        c2 = 2 * w(128)
        self.mixed3 = Concat(ConvBN(c2, w(256), 3, stride=2, padding="valid"), nn.MaxPool3d(3, stride=2))
        self.out_channels = w(256) + c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixed3(self.mixed2(self.mixed1(self.conv2(self.conv1(x)))))


class InceptionResNetBlock(nn.Module):
    """Inception-ResNet-A (``block35``), -B (``block17``) or -C (``block8``): x + scale * r(x)."""

    def __init__(self, channels: int, block_type: str, scale: float, width: float, activation: bool = True) -> None:
        super().__init__()
        w = lambda f: _scaled(width, f)  # noqa: E731
        if block_type == "block35":
            branches = [
                ConvBN(channels, w(32), 1),
                nn.Sequential(ConvBN(channels, w(32), 1), ConvBN(w(32), w(32), 3)),
                nn.Sequential(ConvBN(channels, w(32), 1), ConvBN(w(32), w(48), 3), ConvBN(w(48), w(64), 3)),
            ]
            mixed = w(32) + w(32) + w(64)
        elif block_type == "block17":
            branches = [
                ConvBN(channels, w(192), 1),
                nn.Sequential(
                    ConvBN(channels, w(128), 1),
                    ConvBN(w(128), w(148), (1, 7, 1)),
                    ConvBN(w(148), w(170), (1, 1, 7)),
                    ConvBN(w(170), w(192), (7, 1, 1)),
                ),
            ]
            mixed = 2 * w(192)
        elif block_type == "block8":
            branches = [
                ConvBN(channels, w(192), 1),
                nn.Sequential(
                    ConvBN(channels, w(192), 1),
                    ConvBN(w(192), w(212), (1, 3, 1)),
                    ConvBN(w(212), w(234), (1, 1, 3)),
                    ConvBN(w(234), w(256), (3, 1, 1)),
                ),
            ]
            mixed = w(192) + w(256)
        else:
            raise ValueError(f"unknown block type {block_type!r}")
        self.mixed = Concat(*branches)
        self.up = ConvBN(mixed, channels, 1, activation=False, batch_norm=False)
        self.scale = scale
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale * self.up(self.mixed(x))
        return F.relu(x) if self.activation else x


class InceptionResNetV2(nn.Module):
    """3D Inception-ResNet-V2 base network (the paper's sex classifier or age regressor).

    ``task='sex'``: global average pooling, dropout 0.5, one logit. ``task='age'``: global
    average pooling, dense 128 with ELU, dropout 0.2, one linear output (years).
    """

    def __init__(self, in_channels: int = 2, preset: str = "paper", task: str = "sex") -> None:
        super().__init__()
        p = get_preset(preset)
        w = lambda f: _scaled(p.width, f)  # noqa: E731
        self.stem = Stem(in_channels, p.width)
        c = self.stem.out_channels
        self.block_a = nn.Sequential(*[InceptionResNetBlock(c, "block35", 0.17, p.width) for _ in range(p.blocks[0])])
        self.reduction_a = Concat(
            ConvBN(c, w(384), 3, stride=2, padding="valid"),
            nn.Sequential(ConvBN(c, w(256), 1), ConvBN(w(256), w(256), 3), ConvBN(w(256), w(384), 3, stride=2, padding="valid")),
            nn.MaxPool3d(3, stride=2),
        )
        c = w(384) + w(384) + c
        self.block_b = nn.Sequential(*[InceptionResNetBlock(c, "block17", 0.1, p.width) for _ in range(p.blocks[1])])
        self.reduction_b = Concat(
            nn.Sequential(ConvBN(c, w(256), 1), ConvBN(w(256), w(384), 3, stride=2, padding="valid")),
            nn.Sequential(ConvBN(c, w(256), 1), ConvBN(w(256), w(288), 3, stride=2, padding="valid")),
            nn.Sequential(ConvBN(c, w(256), 1), ConvBN(w(256), w(288), 3), ConvBN(w(288), w(320), 3, stride=2, padding="valid")),
            nn.MaxPool3d(3, stride=2),
        )
        c = w(384) + w(288) + w(320) + c
        blocks_c = [InceptionResNetBlock(c, "block8", 0.2, p.width) for _ in range(p.blocks[2] - 1)]
        blocks_c.append(InceptionResNetBlock(c, "block8", 1.0, p.width, activation=False))
        self.block_c = nn.Sequential(*blocks_c)
        self.conv_7b = ConvBN(c, w(1536), 1)
        if task == "sex":
            self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(w(1536), 1))
        elif task == "age":
            self.head = nn.Sequential(nn.Linear(w(1536), 128), nn.ELU(), nn.Dropout(0.2), nn.Linear(128, 1))
        else:
            raise ValueError(f"unknown task {task!r}; choose 'sex' or 'age'")
        self.task = task
        self.preset = p.name
        self.in_channels = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before global pooling: (N, 1536*width, 4, 6, 4) for the paper sizes."""
        return self.features_from_stem(self.stem(x))

    def features_from_stem(self, s: torch.Tensor) -> torch.Tensor:
        """Feature maps before global pooling from the stem's output ``s``."""
        x = self.block_a(s)
        x = self.block_b(self.reduction_a(x))
        x = self.block_c(self.reduction_b(x))
        return self.conv_7b(x)

    def forward_from_stem(self, s: torch.Tensor) -> torch.Tensor:
        """Output, shape (N,), from the stem's output ``s`` (training with a frozen stem)."""
        return self.head(self.features_from_stem(s).mean(dim=(2, 3, 4))).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_stem(self.stem(x))


class ADTransferNet(nn.Module):
    """AD classifier of the paper: the base network's stem, then plain convolution layers.

    Stem -> max-pool 3/2 -> conv 256 3 valid -> conv 256 3 stride 2 same -> [max-pool 3/2,
    conv 256 3 stride 2 valid] concatenated -> global average pooling -> dropout 0.5 -> one logit.
    """

    def __init__(self, in_channels: int = 2, preset: str = "paper") -> None:
        super().__init__()
        p = get_preset(preset)
        w = lambda f: _scaled(p.width, f)  # noqa: E731
        self.stem = Stem(in_channels, p.width)
        self.top = nn.Sequential(
            nn.MaxPool3d(3, stride=2),
            ConvBN(self.stem.out_channels, w(256), 3, padding="valid"),
            ConvBN(w(256), w(256), 3, stride=2),
            Concat(nn.MaxPool3d(3, stride=2), ConvBN(w(256), w(256), 3, stride=2, padding="valid")),
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(2 * w(256), 1))
        self.preset = p.name
        self.in_channels = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before global pooling: (N, 512*width, 1, 2, 1) for the paper sizes."""
        return self.top(self.stem(x))

    def forward_from_stem(self, s: torch.Tensor) -> torch.Tensor:
        """Logits, shape (N,), from the stem's output ``s`` (training with a frozen stem)."""
        return self.head(self.top(s).mean(dim=(2, 3, 4))).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_stem(self.stem(x))


#: Architectures a model card can name.
ARCHITECTURES = ("ad_transfer", "ad_intact", "sex", "age")


def build_network(architecture: str, preset: str, in_channels: int) -> nn.Module:
    """Build an untrained network: ``ad_transfer`` (the paper's AD model), ``ad_intact`` (AD on the
    full base network), ``sex`` or ``age`` (base networks)."""
    if architecture == "ad_transfer":
        return ADTransferNet(in_channels, preset)
    if architecture in ("sex", "ad_intact"):
        return InceptionResNetV2(in_channels, preset, task="sex")
    if architecture == "age":
        return InceptionResNetV2(in_channels, preset, task="age")
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")


def transfer_stem(base: InceptionResNetV2, target: ADTransferNet) -> int:
    """Copy the pretrained stem of ``base`` into ``target`` (in place); return the number of
    tensors copied. Both must share preset and input channels."""
    if base.preset != target.preset or base.in_channels != target.in_channels:
        raise ValueError(
            f"cannot transfer a {base.preset} stem with {base.in_channels} input channels "
            f"into a {target.preset} network with {target.in_channels}"
        )
    state = base.stem.state_dict()
    target.stem.load_state_dict(state, strict=True)
    return len(state)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; batch-norm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
