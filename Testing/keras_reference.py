"""An independent Keras 3 model of the authors' networks, for testing the HDF5 importer.

Written from the layer description of the authors' ``Inception_resnet_v2_3D.py`` and their AD
transfer script (not from our PyTorch code): channels-last input (N, 96, 120, 86, C), conv + batch
norm without gamma (``scale=False``) + ReLU, TensorFlow 'same'/'valid' padding, residual
projections with a bias and no batch norm, scales 0.17/0.1/0.2 and a last block at 1.0 without
ReLU. Layers get Keras-2 names (``conv3d_1``, ``batch_normalization_1``, ...) and files are written
in the legacy HDF5 layout, as Keras 2 wrote the published models.

``width`` and ``blocks`` shrink the networks for fast tests (the filter rule is max(4, round(f *
width))); width 1.0 and blocks (5, 10, 5) are the published sizes. Runs on Keras' torch backend;
no TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402


class KerasNames:
    """Keras 2's automatic layer names: a counter per layer type, starting at 1."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}_{self.counts[prefix]}"


class Builder:
    def __init__(self, width: float) -> None:
        self.width = width
        self.names = KerasNames()

    def f(self, filters: int) -> int:
        return max(4, int(round(filters * self.width)))

    def conv_bn(self, x, filters, kernel, strides=1, padding="same", activation="relu", use_bias=False, name=None, exact=False):
        x = layers.Conv3D(
            filters if exact else self.f(filters),
            kernel,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            name=name or self.names("conv3d"),
        )(x)
        if not use_bias:
            bn_name = self.names("batch_normalization") if name is None else name + "_bn"
            x = layers.BatchNormalization(axis=4, scale=False, epsilon=1e-3, name=bn_name)(x)
        if activation is not None:
            x = layers.Activation(activation)(x)
        return x

    def stem(self, x):
        x = self.conv_bn(x, 64, 3, padding="valid")
        x = self.conv_bn(x, 96, 3)
        x1 = layers.MaxPooling3D(3, strides=2)(x)
        x2 = self.conv_bn(x, 96, 3, 2, padding="valid")
        x = layers.Concatenate(axis=4)([x1, x2])
        x1 = self.conv_bn(x, 96, 1)
        x1 = self.conv_bn(x1, 128, 3, padding="valid")
        x2 = self.conv_bn(x, 96, 1)
        x2 = self.conv_bn(x2, 96, [1, 7, 1])
        x2 = self.conv_bn(x2, 96, [1, 1, 7])
        x2 = self.conv_bn(x2, 96, [7, 1, 1])
        x2 = self.conv_bn(x2, 128, 3, padding="valid")
        x = layers.Concatenate(axis=4)([x1, x2])
        x1 = self.conv_bn(x, 256, 3, 2, padding="valid")
        x2 = layers.MaxPooling3D(3, strides=2, padding="valid", name="StemEnd")(x)
        return layers.Concatenate(axis=4)([x1, x2])

    def block(self, x, scale, block_type, block_idx, activation="relu"):
        if block_type == "block35":
            b0 = self.conv_bn(x, 32, 1)
            b1 = self.conv_bn(self.conv_bn(x, 32, 1), 32, 3)
            b2 = self.conv_bn(self.conv_bn(self.conv_bn(x, 32, 1), 48, 3), 64, 3)
            branches = [b0, b1, b2]
        else:
            # Branch 1 factorises an n x n x n kernel into 1xnx1, 1x1xn, nx1x1 (n = 7 for B, 3 for C).
            n, filters = (7, (128, 148, 170, 192)) if block_type == "block17" else (3, (192, 212, 234, 256))
            b0 = self.conv_bn(x, 192, 1)  # created first: Keras numbers layers in creation order
            b1 = self.conv_bn(x, filters[0], 1)
            for f, kernel in zip(filters[1:], ([1, n, 1], [1, 1, n], [n, 1, 1]), strict=True):
                b1 = self.conv_bn(b1, f, kernel)
            branches = [b0, b1]
        name = f"{block_type}_{block_idx}"
        mixed = layers.Concatenate(axis=4, name=name + "_mixed")(branches)
        channels = x.shape[4]
        up = self.conv_bn(mixed, channels, 1, activation=None, use_bias=True, name=name + "_conv", exact=True)
        x = layers.Lambda(lambda t, scale: t[0] + t[1] * scale, output_shape=tuple(x.shape[1:]), arguments={"scale": scale}, name=name)(
            [x, up]
        )
        if activation is not None:
            x = layers.Activation(activation, name=name + "_ac")(x)
        return x


def sex_network(width: float = 1.0, blocks: tuple[int, int, int] = (5, 10, 5), channels: int = 2) -> keras.Model:
    """The authors' sex classifier: Inception-ResNet-V2 3D, GAP, dropout 0.5, Dense(1, sigmoid)."""
    b = Builder(width)
    inputs = layers.Input((96, 120, 86, channels))
    x = b.stem(inputs)
    for i in range(1, blocks[0] + 1):
        x = b.block(x, 0.17, "block35", i)
    b0 = b.conv_bn(x, 384, 3, strides=2, padding="valid")
    b1 = b.conv_bn(b.conv_bn(b.conv_bn(x, 256, 1), 256, 3), 384, 3, strides=2, padding="valid")
    x = layers.Concatenate(axis=4, name="mixed_6a")([b0, b1, layers.MaxPooling3D(3, strides=2, padding="valid")(x)])
    for i in range(1, blocks[1] + 1):
        x = b.block(x, 0.1, "block17", i)
    b0 = b.conv_bn(b.conv_bn(x, 256, 1), 384, 3, strides=2, padding="valid")
    b1 = b.conv_bn(b.conv_bn(x, 256, 1), 288, 3, strides=2, padding="valid")
    b2 = b.conv_bn(b.conv_bn(b.conv_bn(x, 256, 1), 288, 3), 320, 3, strides=2, padding="valid")
    x = layers.Concatenate(axis=4, name="mixed_7a")([b0, b1, b2, layers.MaxPooling3D(3, strides=2, padding="valid")(x)])
    for i in range(1, blocks[2]):
        x = b.block(x, 0.2, "block8", i)
    x = b.block(x, 1.0, "block8", 5 if blocks[2] <= 5 else blocks[2], activation=None)
    x = b.conv_bn(x, 1536, 1, name="conv_7b")
    x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
    x = layers.Dropout(0.5, name=b.names("dropout"))(x)
    outputs = layers.Dense(1, activation="sigmoid", name=b.names("dense"))(x)
    return keras.Model(inputs, outputs)


def ad_network(width: float = 1.0, channels: int = 2) -> keras.Model:
    """The authors' AD classifier: the sex network's stem, max-pool, conv1-conv3, GAP, dropout,
    Dense(1, sigmoid)."""
    b = Builder(width)
    inputs = layers.Input((96, 120, 86, channels))
    x = b.stem(inputs)
    x = layers.MaxPooling3D(3, strides=2, name="mpool1")(x)
    x = b.conv_bn(x, 256, 3, padding="valid", name="conv1")
    x = b.conv_bn(x, 256, 3, 2, name="conv2")
    x1 = layers.MaxPooling3D(3, strides=2, name="mpool2")(x)
    x2 = b.conv_bn(x, 256, 3, 2, padding="valid", name="conv3")
    x = layers.Concatenate(axis=4, name="conc1")([x1, x2])
    x = layers.GlobalAveragePooling3D(name="apool1")(x)
    x = layers.Dropout(0.5, name="dropout1")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="dense_1")(x)
    return keras.Model(inputs, outputs)


def randomise_batch_norms(model: keras.Model, seed: int) -> None:
    """Give every batch norm non-trivial beta, moving mean and moving variance."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            beta, mean, var = (w.numpy() for w in layer.weights)
            layer.set_weights(
                [
                    rng.normal(0.0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0.0, 0.05, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )


def calibrate_output(model: keras.Model, inputs: np.ndarray) -> None:
    """Scale and shift the Dense output so that ``inputs`` give spread-out logits (mean 0, std 2),
    which makes a probability comparison meaningful (no saturation at 0 or 1)."""
    pooled = keras.Model(model.input, model.layers[-3].output).predict(inputs, verbose=0)
    dense = model.layers[-1]
    kernel, bias = (w.numpy() for w in dense.weights)
    logits = pooled @ kernel[:, 0]
    scale = 2.0 / max(float(logits.std()), 1e-6)
    dense.set_weights([kernel * scale, np.array([-float(logits.mean()) * scale], dtype="float32")])


def save_legacy_h5(model: keras.Model, path: str | Path) -> Path:
    """Write ``model`` as a Keras-2-style HDF5 model file (``model_weights`` with ``layer_names``)."""
    legacy_h5_format.save_model_to_hdf5(model, str(path))
    return Path(path)


def predict(model: keras.Model, x_ncdhw: np.ndarray) -> np.ndarray:
    """Keras' probabilities for inputs in our layout (N, C, 96, 120, 86), shape (N,)."""
    return model.predict(np.transpose(x_ncdhw, (0, 2, 3, 4, 1)), verbose=0)[:, 0].astype(np.float64)
