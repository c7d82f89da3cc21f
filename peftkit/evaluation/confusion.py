"""The confusion matrix made readable at any number of classes: the pairs most confused, an order of the classes
that puts confused classes side by side, and a heatmap whose size in pixels does not grow with the classes.

A few classes (up to FULL_MATRIX_MAX) are drawn as the full annotated matrix of counts. Beyond that a K x K grid
of numbers is unreadable and, drawn at a fixed size per cell, costs memory with the square of K (150 classes
made a 15,000 x 15,000 pixel PNG and a 9.5 GB peak): many classes get a row-normalised heatmap of bounded size,
ordered by hierarchical clustering of the confusions, and the most-confused pairs are listed beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FULL_MATRIX_MAX = 12
HEATMAP_INCHES = 11.0
HEATMAP_DPI = 130
MESH_MAX = 300
TICK_LABELS_MAX = 200  # beyond this the tick labels would be under 3 points: the order is in metrics.json instead


def top_confusions(matrix: list[list[int]], labels: list[str], n: int = 10) -> list[dict[str, Any]]:
    """The n off-diagonal cells with the most examples: true label, predicted label, count, share of the true
    class's examples. Ties keep label order, so the list is the same on every run of the same predictions."""
    cells = [(count, i, j) for i, row in enumerate(matrix) for j, count in enumerate(row) if i != j and count]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    out = []
    for count, i, j in cells[:n]:
        support = sum(matrix[i])
        out.append({"true": labels[i], "predicted": labels[j], "count": int(count),
                    "share_of_true": count / support if support else 0.0})
    return out


def class_order(matrix: list[list[int]]) -> list[int]:
    """Class indices ordered so that classes confused with each other sit together: average-linkage clustering
    (scipy) on 1 - the symmetric confusion rate, with the leaves in scipy's optimal order."""
    import numpy as np

    k = len(matrix)
    if k < 3:
        return list(range(k))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    similarity = (rates + rates.T) / 2.0
    np.fill_diagonal(similarity, 0.0)
    top = similarity.max()
    distance = 1.0 - (similarity / top if top > 0 else similarity)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
    return [int(i) for i in leaves_list(tree)]


def plot_confusion_matrix(metrics: dict[str, Any], path: Path) -> None:
    """confusion_matrix.png, written atomically: annotated counts for a few classes, else a bounded heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = metrics["labels"]
    fig = (annotated_matrix if len(labels) <= FULL_MATRIX_MAX else ordered_heatmap)(metrics)
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=HEATMAP_DPI if len(labels) > FULL_MATRIX_MAX else 110)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def annotated_matrix(metrics: dict[str, Any]):
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(metrics["labels"])
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * n, 1.8 + 0.9 * n))
    ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=metrics["labels"]).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    return fig


def ordered_heatmap(metrics: dict[str, Any]):
    """Row-normalised (share of each true class), classes in confusion order; the figure is HEATMAP_INCHES square
    whatever the number of classes, so its pixels and memory are bounded."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import PowerNorm

    labels = metrics["labels"]
    order = class_order(metrics["confusion_matrix"])
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.float64)[np.ix_(order, order)]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    fig, ax = plt.subplots(figsize=(HEATMAP_INCHES, HEATMAP_INCHES * 0.92))
    k = len(labels)
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)  # square-root colours: a 5% confusion is visible next to the diagonal
    if k <= MESH_MAX:  # one quad per cell: no image resampled at the figure's size (measured 16 vs 49 MB at K=150)
        image = ax.pcolormesh(np.arange(k + 1) - 0.5, np.arange(k + 1) - 0.5, rates, cmap="Blues", norm=norm)
        ax.set_xlim(-0.5, k - 0.5)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_aspect("equal")
    else:  # beyond, quads cost more than an image whose size is the figure's, whatever K
        image = ax.imshow(rates, cmap="Blues", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02, label="share of the true class (square-root scale)")
    if k <= TICK_LABELS_MAX:
        size = max(3.0, min(8.0, 560.0 / k))
        names = [labels[i] for i in order]
        ax.set_xticks(range(k), names, rotation=90, fontsize=size)
        ax.set_yticks(range(k), names, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted (classes ordered so that confused classes sit together)")
    ax.set_ylabel("true")
    ax.set_title(f"{k} classes: accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    return fig
