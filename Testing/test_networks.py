"""The networks: paper sizes, shapes, padding rule, variants and stem transfer."""

from __future__ import annotations

import pytest
import torch

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.model.networks import (
    ADTransferNet,
    ConvBN,
    InceptionResNetV2,
    build_network,
    count_parameters,
    transfer_stem,
)


@pytest.mark.parametrize(("architecture", "published"), [("sex", 54e6), ("ad_transfer", 10e6)])
def test_paper_parameter_counts_match_the_publication(architecture: str, published: float) -> None:
    count = count_parameters(build_network(architecture, "paper", 2))
    assert abs(count - published) / published < 0.15, count


def test_ad_network_is_much_smaller_than_the_base() -> None:
    for preset in ("paper", "small", "tiny"):
        base = count_parameters(build_network("sex", preset, 2))
        ad = count_parameters(build_network("ad_transfer", preset, 2))
        assert ad < base / 2, (preset, ad, base)


def test_paper_feature_map_shapes_follow_the_authors_model() -> None:
    x = torch.empty(1, 2, *grid.MODEL_SHAPE, device="meta")
    base = InceptionResNetV2(2, "paper").to("meta")
    assert tuple(base.stem(x).shape) == (1, 512, 21, 27, 19)
    assert tuple(base.features(x).shape) == (1, 1536, 4, 6, 4)
    ad = ADTransferNet(2, "paper").to("meta")
    assert tuple(ad.features(x).shape) == (1, 512, 1, 2, 1)
    assert tuple(ad(x).shape) == (1,)


@pytest.mark.parametrize("size", [5, 8, 9, 10, 13])
def test_same_padding_with_stride_follows_tensorflow(size: int) -> None:
    layer = ConvBN(1, 1, 3, stride=2, padding="same")
    out = layer(torch.zeros(1, 1, size, size + 1, size + 2))
    assert tuple(out.shape[2:]) == tuple(-(-n // 2) for n in (size, size + 1, size + 2))


def test_tiny_networks_run_and_train_on_the_model_grid() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 2, *grid.MODEL_SHAPE)
    for architecture in ("sex", "age", "ad_transfer"):
        model = build_network(architecture, "tiny", 2)
        out = model(x)
        assert out.shape == (2,) and torch.isfinite(out).all()
        out.sum().backward()
        first_conv = model.stem.conv1.conv.weight
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_single_channel_variant_takes_one_map() -> None:
    model = build_network("ad_transfer", "tiny", 1).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 1, *grid.MODEL_SHAPE)).shape == (1,)
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 2, *grid.MODEL_SHAPE))


def test_age_variant_has_the_dense_elu_head_with_dropout_02() -> None:
    head = build_network("age", "tiny", 2).head
    assert isinstance(head[0], torch.nn.Linear) and head[0].out_features == 128
    assert isinstance(head[1], torch.nn.ELU)
    assert isinstance(head[2], torch.nn.Dropout) and head[2].p == pytest.approx(0.2)
    sex_head = build_network("sex", "tiny", 2).head
    assert isinstance(sex_head[0], torch.nn.Dropout) and sex_head[0].p == pytest.approx(0.5)


def test_transfer_stem_copies_every_stem_tensor_and_nothing_else() -> None:
    torch.manual_seed(1)
    base = InceptionResNetV2(2, "tiny")
    for p in base.parameters():
        p.data.normal_()
    torch.manual_seed(2)
    ad = ADTransferNet(2, "tiny")
    top_before = {k: v.clone() for k, v in ad.top.state_dict().items()}
    assert not torch.equal(ad.stem.conv1.conv.weight, base.stem.conv1.conv.weight)
    copied = transfer_stem(base, ad)
    assert copied == len(base.stem.state_dict())
    for key, value in base.stem.state_dict().items():
        assert torch.equal(ad.stem.state_dict()[key], value), key
    for key, value in ad.top.state_dict().items():
        assert torch.equal(value, top_before[key]), key
    x = torch.rand(1, 2, *grid.MODEL_SHAPE)
    base.eval(), ad.eval()
    with torch.inference_mode():
        assert torch.allclose(base.stem(x), ad.stem(x))


def test_transfer_stem_refuses_mismatched_networks() -> None:
    with pytest.raises(ValueError, match="cannot transfer"):
        transfer_stem(InceptionResNetV2(2, "tiny"), ADTransferNet(1, "tiny"))
    with pytest.raises(ValueError, match="cannot transfer"):
        transfer_stem(InceptionResNetV2(2, "tiny"), ADTransferNet(2, "small"))


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        build_network("ad_transfer", "huge", 2)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("resnet", "tiny", 2)
