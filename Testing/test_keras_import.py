"""Importing the authors' Keras HDF5 models, checked against an independent Keras 3 model of their
architecture (``keras_reference``, torch backend, no TensorFlow) saved in the legacy HDF5 layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import keras_reference as kr
import nibabel as nib
import numpy as np
import pytest

from BrainImageNetADLib.cli import main
from BrainImageNetADLib.core import grid
from BrainImageNetADLib.model.bundle import read_card, sha256_file
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.keras_import import approximate_brain_mask, import_keras_bundle, import_keras_model
from BrainImageNetADLib.model.maps import load_model_input
from BrainImageNetADLib.viewer.web import model_choices
from conftest import HANG_GUARD_S, assert_input_error

TINY = 0.0625


def keras_inputs(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the authors' scripts feed their networks: maps times their mask, stored as float16."""
    return (x * mask[None, None]).astype(np.float16).astype(np.float32)


def make_inputs(sample: dict[str, Path], seed: int = 0) -> np.ndarray:
    """The sample case's maps and two random inputs of different intensity, shape (3, 2, 96, 120, 86)."""
    maps, _ = load_model_input(sample, ["GMD", "GMV"])
    rng = np.random.default_rng(seed)
    noise = rng.random((2, 2, *grid.MODEL_SHAPE), dtype=np.float32) * np.array([0.4, 1.0], dtype=np.float32)[:, None, None, None, None]
    return np.concatenate([maps[None], noise]).astype(np.float32)


def make_keras_model(kind: str, width: float, seed: int) -> kr.keras.Model:
    kr.keras.utils.set_random_seed(seed)
    blocks = {TINY: (1, 1, 1), 0.25: (2, 4, 2), 1.0: (5, 10, 5)}[width]  # our tiny, small and paper presets
    model = kr.ad_network(width) if kind == "ad" else kr.sex_network(width, blocks)
    kr.randomise_batch_norms(model, seed)
    return model


@pytest.fixture(scope="module")
def authors_files(tmp_path_factory: pytest.TempPathFactory, sample: dict[str, Path]) -> dict:
    """Two tiny AD folds and a tiny sex network as Keras-2-style HDF5 files, a mask as an Analyze
    .img/.hdr pair on the 121x145x121 grid, and Keras' probabilities on the test inputs."""
    folder = tmp_path_factory.mktemp("keras")
    mask = approximate_brain_mask()
    mask[:, :, :10] = 0  # unlike our stand-in, so that a test sees which mask was applied
    mask[:, :, 40:50] *= 0.5  # not binary: applying it twice would change the answers
    nib.save(nib.AnalyzeImage(grid.uncrop_to_mni_grid(mask), grid.MNI_AFFINE), folder / "Reslice_BrainMask_05_91x109x91.img")
    x = make_inputs(sample)
    fed = keras_inputs(x, mask)
    files, probabilities = {}, {}
    for name, kind, seed in (("fold0", "ad", 1), ("fold1", "ad", 2), ("sex", "sex", 3)):
        model = make_keras_model(kind, TINY, seed)
        kr.calibrate_output(model, np.transpose(fed, (0, 2, 3, 4, 1)))
        files[name] = kr.save_legacy_h5(model, folder / f"{name}.h5")
        probabilities[name] = kr.predict(model, fed)
    return {
        "folder": folder,
        "files": files,
        "keras": probabilities,
        "x": x,
        "mask": mask,
        "mask_file": folder / "Reslice_BrainMask_05_91x109x91.img",
    }


@pytest.fixture(scope="module")
def imported(authors_files: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = authors_files["files"]
    out = tmp_path_factory.mktemp("models") / "brainimagenet-lu"
    template = (authors_files["folder"] / "Template_wc1_ADNC5050.nii", authors_files["folder"] / "Template_mwc1_ADNC5050.nii")
    for channel, path in zip(authors_files["x"][1], template, strict=True):  # a stand-in for their template: another brain's maps
        nib.save(nib.Nifti1Image(grid.uncrop_to_mni_grid(channel), grid.MNI_AFFINE), path)
    return import_keras_bundle(
        [files["fold0"], files["fold1"]], out, base_file=files["sex"], mask_file=authors_files["mask_file"], risk_template=template
    )


def test_reference_has_the_published_parameter_counts() -> None:
    """The Keras reference is the authors' architecture: trainable parameters as their Keras
    models count them (sex base network 54,012,539; AD network 10,162,017)."""
    for model, published in ((kr.sex_network(), 54_012_539), (kr.ad_network(), 10_162_017)):
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == published


def test_imported_ensemble_gives_keras_probabilities(imported: Path, authors_files: dict) -> None:
    ensemble = Ensemble.from_bundle(imported)
    mean, per_fold = ensemble.predict_proba(authors_files["x"])
    expected = np.stack([authors_files["keras"]["fold0"], authors_files["keras"]["fold1"]], axis=1)
    assert np.ptp(expected[:, 0]) > 0.2, "the reference outputs are not spread out: the comparison would be weak"
    np.testing.assert_allclose(per_fold, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(mean, expected.mean(axis=1), atol=1e-4, rtol=0)
    # Without the authors' mask the answers differ: the convention matters and is applied.
    raw = Ensemble(ensemble.card, ensemble.models)
    assert np.abs(raw.predict_proba(authors_files["x"])[1] - expected).max() > 1e-3


def test_imported_sex_network_gives_keras_probabilities(imported: Path, authors_files: dict) -> None:
    ensemble = Ensemble.from_bundle(imported / "base")
    _, per_fold = ensemble.predict_proba(authors_files["x"])
    np.testing.assert_allclose(per_fold[:, 0], authors_files["keras"]["sex"], atol=1e-4, rtol=0)
    assert ensemble.card.classes == ("female", "male")
    assert ensemble.predict(authors_files["x"][0], 0.0).label == "male"


@pytest.mark.parametrize("kind", ["ad", "sex"])
def test_small_networks_with_several_blocks_match(kind: str, tmp_path: Path, sample: dict[str, Path]) -> None:
    """Wider networks with more than one block per group: block order, residual scales, the last
    block without ReLU and conv_7b all line up."""
    model = make_keras_model(kind, 0.25, 7)
    x = make_inputs(sample, seed=1)
    kr.calibrate_output(model, np.transpose(x, (0, 2, 3, 4, 1)))
    path = kr.save_legacy_h5(model, tmp_path / "m.h5")
    network, preset, _ = import_keras_model(path)
    assert preset == "small"
    import torch

    with torch.no_grad():
        ours = torch.sigmoid(network(torch.from_numpy(x))).double().numpy()
    np.testing.assert_allclose(ours, kr.predict(model, x), atol=1e-4, rtol=0)


def test_paper_size_ad_network_matches_on_the_sample(tmp_path: Path, sample: dict[str, Path]) -> None:
    """The published size (10 M parameters) on the sample maps and a random input."""
    model = make_keras_model("ad", 1.0, 11)
    x = make_inputs(sample)[:2]
    kr.calibrate_output(model, np.transpose(x, (0, 2, 3, 4, 1)))
    import_keras_bundle([kr.save_legacy_h5(model, tmp_path / "ad.h5")], tmp_path / "bundle")
    ensemble = Ensemble.from_bundle(tmp_path / "bundle")
    assert ensemble.card.preset == "paper"
    # No mask was given: the card says the stand-in was used, and Keras is fed the same.
    assert ensemble.card.conventions["mask"]["source"].startswith("APPROXIMATION")
    expected = kr.predict(model, keras_inputs(x, approximate_brain_mask()))
    np.testing.assert_allclose(ensemble.predict_proba(x)[0], expected, atol=1e-4, rtol=0)


def test_paper_size_sex_network_imports(tmp_path: Path) -> None:
    """All 54 M parameters of the published base network map onto ours (5, 10, 5 blocks)."""
    model = make_keras_model("sex", 1.0, 12)
    network, preset, _ = import_keras_model(kr.save_legacy_h5(model, tmp_path / "sex.h5"))
    assert preset == "paper"
    kernel = model.get_layer("block17_10_conv").weights[0].numpy()
    np.testing.assert_array_equal(network.block_b[9].up.conv.weight.detach().numpy(), np.transpose(kernel, (4, 3, 0, 1, 2)))


def test_card_states_provenance_terms_and_conventions(imported: Path, authors_files: dict) -> None:
    card = read_card(imported)
    assert card.demo is False and card.architecture == "ad_transfer" and card.classes == ("NC", "AD")
    assert card.threshold_presets == {"balanced": 0.5, "screening": 0.3}
    assert card.operating_points == []  # nothing verified here
    assert "research use only" in card.intended_use.lower()
    third = card.data["third_party"]
    assert third["redistribution"] == "not allowed" and "all rights reserved" in third["terms"]
    files = authors_files["files"]
    assert [s["sha256"] for s in third["source_files"]] == [sha256_file(files["fold0"]), sha256_file(files["fold1"])]
    assert card.data["reported_performance"]["status"] == "reported by the authors, not verified here"
    conventions = card.conventions
    assert conventions["round_float16"] is True and "supplied by the user" in conventions["mask"]["source"]
    assert set(conventions["sources"]) >= {"channels", "grid_and_crop", "mask", "round_float16"}
    assert card.data["base_bundle"] == "base" and read_card(imported / "base").architecture == "sex"


def test_predict_and_occlusion_run_on_the_imported_bundle(
    imported: Path, authors_files: dict, sample: dict[str, Path], tmp_path: Path
) -> None:
    code = main(["predict", "--gmd", str(sample["GMD"]), "--gmv", str(sample["GMV"]), "--model", str(imported)]
                + ["--out", str(tmp_path), "--occlusion-fold", "0"])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "result.json").read_text())
    expected = np.mean([authors_files["keras"]["fold0"][0], authors_files["keras"]["fold1"][0]])
    assert abs(result["probability"] - expected) < 1e-4
    assert result["label"] == ("AD" if expected >= 0.5 else "NC") and result["demo"] is False
    assert result["occlusion"]["method"] == "incremental"
    assert np.abs(nib.load(tmp_path / "occlusion.nii.gz").get_fdata()).max() > 0


def test_the_authors_risk_template_is_stored_with_its_score(imported: Path, authors_files: dict) -> None:
    from BrainImageNetADLib.model.bundle import load_risk_template, read_card

    card = read_card(imported)
    entry = card.risk_template
    assert "Template_wc1_ADNC5050.nii (sha256" in entry["made"] and "supplied by the user" in entry["made"]
    template = load_risk_template(imported, card)
    np.testing.assert_allclose(template, authors_files["x"][1], atol=1e-3)  # stored as float16
    expected = np.mean([authors_files["keras"]["fold0"][1], authors_files["keras"]["fold1"][1]])  # Keras on those maps
    assert entry["score"] == pytest.approx(expected, abs=1e-3)
    assert float(Ensemble.from_bundle(imported, engine="torch").predict_proba(template[None])[0][0]) == pytest.approx(
        entry["score"], abs=1e-5
    )
    assert read_card(imported / "base").risk_template is None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "BrainImageNetADLib.cli", *args], capture_output=True, text=True, timeout=HANG_GUARD_S)


def edited_copy(source: Path, target: Path, edit) -> Path:  # noqa: ANN001
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def as_text(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def layer_names(names: list) -> np.ndarray:
    """Layer names as Keras 2 stored them: an array of byte strings."""
    return np.array([as_text(n).encode() for n in names])


def drop_layer(name: str):  # noqa: ANN201
    def edit(f: h5py.File) -> None:
        group = f["model_weights"]
        del group[name]
        group.attrs["layer_names"] = layer_names([n for n in group.attrs["layer_names"] if as_text(n) != name])

    return edit


def test_bad_files_exit_2_naming_file_and_layer(authors_files: dict, tmp_path: Path) -> None:
    fold0 = authors_files["files"]["fold0"]
    out = tmp_path / "bundle"
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not a model")
    assert_input_error(run_cli("import-keras", "--ad", str(not_hdf5), "--out", str(out)), "notes.h5: not a readable Keras HDF5 file")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(fold0.read_bytes()[: fold0.stat().st_size // 2])
    assert_input_error(run_cli("import-keras", "--ad", str(truncated), "--out", str(out)), "truncated.h5")
    missing = edited_copy(fold0, tmp_path / "missing.h5", drop_layer("conv3d_5"))
    assert_input_error(run_cli("import-keras", "--ad", str(missing), "--out", str(out)), "missing.h5: layer conv3d_5 is missing")
    sex = authors_files["files"]["sex"]
    assert_input_error(run_cli("import-keras", "--ad", str(sex), "--out", str(out)), "sex.h5: holds a sex network, expected ad_transfer")
    assert not out.exists() and not list(tmp_path.glob(".bundle.*")), "a failed import left files behind"


def test_mismatched_layers_are_named(authors_files: dict, tmp_path: Path) -> None:
    fold0 = authors_files["files"]["fold0"]

    def extra(f: h5py.File) -> None:
        group = f["model_weights"]
        group.copy("conv3d_3", "conv3d_40")
        layer = group["conv3d_40"]
        layer.move("conv3d_3", "conv3d_40")
        layer.attrs["weight_names"] = [b"conv3d_40/kernel"]
        group.attrs["layer_names"] = layer_names([*group.attrs["layer_names"], "conv3d_40"])

    with pytest.raises(Exception, match="extra.h5: layer conv3d_40 is not part of the network"):
        import_keras_model(edited_copy(fold0, tmp_path / "extra.h5", extra))

    def permuted(f: h5py.File) -> None:  # a (1, 7, 1) kernel stored as (7, 1, 1)
        data = f["model_weights/conv3d_7/conv3d_7/kernel"][...]
        del f["model_weights/conv3d_7/conv3d_7/kernel"]
        f["model_weights/conv3d_7/conv3d_7/kernel"] = np.transpose(data, (1, 0, 2, 3, 4))

    with pytest.raises(Exception, match=r"permuted.h5: layer conv3d_7: kernel has shape \(7, 1, 1, 6, 6\)"):
        import_keras_model(edited_copy(fold0, tmp_path / "permuted.h5", permuted))

    def padding(f: h5py.File) -> None:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "conv3d_2":
                layer["config"]["padding"] = "valid"
        f.attrs["model_config"] = json.dumps(config)

    with pytest.raises(Exception, match="padding.h5: layer conv3d_2: padding 'valid', the network uses same"):
        import_keras_model(edited_copy(fold0, tmp_path / "padding.h5", padding))


def test_a_model_saved_inside_another_is_read(authors_files: dict, tmp_path: Path) -> None:
    """Multi-GPU training saved the network as a layer of an outer model: its weights then sit in
    one group, named by layer."""
    model = make_keras_model("ad", TINY, 1)
    inputs = kr.keras.layers.Input((96, 120, 86, 2))
    outer = kr.keras.Model(inputs, model(inputs))
    path = kr.save_legacy_h5(outer, tmp_path / "nested.h5")
    with h5py.File(path) as f:
        assert len([n for n in f["model_weights"].attrs["layer_names"] if len(f["model_weights"][n].attrs["weight_names"])]) == 1
    network, _, _ = import_keras_model(path)
    flat, _, _ = import_keras_model(kr.save_legacy_h5(model, tmp_path / "flat.h5"))
    for (name, ours), theirs in zip(network.state_dict().items(), flat.state_dict().values(), strict=True):
        assert np.array_equal(ours.numpy(), theirs.numpy()), name


def test_model_chooser_lists_imported_bundles(imported: Path) -> None:
    choices = model_choices(imported.parent)
    assert choices["brainimagenet-lu"] == imported.resolve()
    assert "demo-tiny" in choices  # the shipped bundles stay listed
