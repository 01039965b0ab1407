"""Draw the module and extension icons (128x128 PNG) from the bundled sample's GMD map."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def draw(slice_2d: np.ndarray, cmap: str, path: Path) -> None:
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.rot90(slice_2d), cmap=cmap, vmin=0, vmax=1)
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, transparent=True)
    plt.close(fig)


def main() -> None:
    gmd = np.asanyarray(nib.load(str(ROOT / "Resources/Sample/colin27_gmd.nii.gz")).dataobj)
    coronal = gmd[:, 60, :]  # through the hippocampi
    draw(coronal, "hot", ROOT / "Resources/Icons/BrainImageNetAD.png")
    draw(coronal, "hot", ROOT / "BrainImageNetAD/Resources/Icons/BrainImageNetAD.png")
    draw(gmd[:, :, 60], "viridis", ROOT / "BrainImageNetTraining/Resources/Icons/BrainImageNetTraining.png")


if __name__ == "__main__":
    main()
