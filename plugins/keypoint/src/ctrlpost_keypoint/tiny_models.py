"""Random stand-ins for the DWPose files (``Annotator.make_tiny``), for the tiny flavor.

`fetch-weights` calls :func:`make_tiny` instead of downloading :data:`DWPOSE_REPO` for a recipe
whose weights are made locally. It writes ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx`` with the
released models' interfaces at small sizes, so :func:`~ctrlpost_keypoint.annotator.load_wholebody`
and the annotation run exactly as on the release:

- detector, input ``[batch, 3, 64, 64]``: the raw YOLOX output ``[batch, 84, 85]`` (box
  offsets, then sigmoid objectness and class probabilities) of random convolutions, bounded so
  that a frame holds at most four persons of plausible size (:func:`detector_graph`);
- pose model, input ``[batch, 3, 32, 24]``: SimCC outputs ``[batch, 133, 48]`` and
  ``[batch, 133, 64]`` of random projections, bounded so that the confidences lie on both
  sides of the hint's 0.6 threshold (:func:`pose_graph`).

A pure function of ``seed``: the same files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrlpost_keypoint import onnx_graph as g
from ctrlpost_keypoint.annotator import DETECTOR_FILE, DWPOSE_REPO, NUM_KEYPOINTS, POSE_FILE

DETECTOR_HW = (64, 64)
POSE_HW = (32, 24)
SIMCC_SPLIT = 2
STRIDES = (8, 16, 32)  # YOLOX's, as person_detector.STRIDES (which imports cv2)
_CHANNELS = 85  # 4 box offsets, objectness, 80 COCO classes


def _anchor_tables() -> tuple[np.ndarray, np.ndarray]:
    """``gain`` ``[1, 1, 85]`` and ``bias`` ``[1, anchors, 85]`` applied to the random values
    (each in -1..1): box centres inside the anchor's cell, sizes 0.5 x exp(+-0.4)
    strides, objectness -8 (never a person) except on the stride-32 grid, where objectness and
    the person class are +-2 logits, the person class leaning to yes."""
    counts = [(DETECTOR_HW[0] // s) * (DETECTOR_HW[1] // s) for s in STRIDES]
    gain = np.full((1, 1, _CHANNELS), 2.0, np.float32)
    gain[0, 0, :4] = [0.5, 0.5, 0.4, 0.4]
    bias = np.zeros((1, sum(counts), _CHANNELS), np.float32)
    bias[0, :, :2] = 0.5  # offsets from the cell's corner: its centre
    bias[0, :, 2:4] = np.log(0.5)
    bias[0, :sum(counts[:-1]), 4] = -8.0
    bias[0, :, 5] = 1.0
    return gain, bias


def detector_graph(rng: np.random.Generator) -> bytes:
    """The serialised tiny YOLOX: per stride a random convolution of the image (scaled to 0..1)
    with kernel and step the stride, squashed by ``tanh`` and mapped by :func:`_anchor_tables`,
    so that a frame holds at most four persons (the stride-32 anchors), 11 to 24 pixels
    wide."""
    nodes = [g.node("Mul", ["input", "inv255"], ["x"])]
    inits: dict[str, np.ndarray] = {"inv255": np.array([1 / 255], np.float32),
                                    "flat": np.array([0, _CHANNELS, -1], np.int64)}
    for stride in STRIDES:
        inits[f"w{stride}"] = rng.normal(0.0, 1.0 / stride, (_CHANNELS, 3, stride, stride)
                                         ).astype(np.float32)
        nodes += [g.node("Conv", ["x", f"w{stride}"], [f"map{stride}"],
                         kernel_shape=[stride, stride], strides=[stride, stride]),
                  g.node("Reshape", [f"map{stride}", "flat"], [f"rows{stride}"])]
    gain, bias = _anchor_tables()
    inits |= {"gain": gain, "bias": bias,
              "zero": np.array([0], np.int64), "four": np.array([4], np.int64),
              "end": np.array([_CHANNELS], np.int64), "last": np.array([2], np.int64)}
    nodes += [g.node("Concat", [f"rows{s}" for s in STRIDES], ["rows"], axis=2),
              g.node("Transpose", ["rows"], ["anchors"], perm=[0, 2, 1]),
              g.node("Tanh", ["anchors"], ["bounded"]),
              g.node("Mul", ["bounded", "gain"], ["scaled"]),
              g.node("Add", ["scaled", "bias"], ["raw"]),
              g.node("Slice", ["raw", "zero", "four", "last"], ["boxes"]),
              g.node("Slice", ["raw", "four", "end", "last"], ["logits"]),
              g.node("Sigmoid", ["logits"], ["probabilities"]),
              g.node("Concat", ["boxes", "probabilities"], ["output"], axis=2)]
    return g.model(nodes, inits, [g.value_info("input", ["batch", 3, *DETECTOR_HW])],
                   [g.value_info("output", ["batch", bias.shape[1], _CHANNELS])])


def pose_graph(rng: np.random.Generator) -> bytes:
    """The serialised tiny SimCC pose model: a random 1x1 convolution to 133 maps, averaged
    over rows (columns), projected onto the x (y) bins and squashed to +-0.1 (``0.1 tanh``)
    around a random level per keypoint between 0.35 and 0.75: confidences of about 0.45 to 0.85,
    so the hint draws some keypoints of each person and not others."""
    h, w = POSE_HW
    inits = {
        "w": rng.normal(0.0, 1.0, (NUM_KEYPOINTS, 3, 1, 1)).astype(np.float32),
        "project_x": rng.normal(0.0, 1.0, (w, w * SIMCC_SPLIT)).astype(np.float32),
        "project_y": rng.normal(0.0, 1.0, (h, h * SIMCC_SPLIT)).astype(np.float32),
        "tenth": np.array([0.1], np.float32),
        "centre": rng.uniform(0.35, 0.75, (1, NUM_KEYPOINTS, 1)).astype(np.float32),
    }
    nodes = [g.node("Conv", ["input", "w"], ["maps"])]
    for axis, name in ((2, "x"), (3, "y")):
        nodes += [g.node("ReduceMean", ["maps"], [f"along_{name}"], axes=[axis], keepdims=0),
                  g.node("MatMul", [f"along_{name}", f"project_{name}"], [f"bins_{name}"]),
                  g.node("Tanh", [f"bins_{name}"], [f"bounded_{name}"]),
                  g.node("Mul", [f"bounded_{name}", "tenth"], [f"small_{name}"]),
                  g.node("Add", [f"small_{name}", "centre"], [f"simcc_{name}"])]
    outputs = [g.value_info("simcc_x", ["batch", NUM_KEYPOINTS, w * SIMCC_SPLIT]),
               g.value_info("simcc_y", ["batch", NUM_KEYPOINTS, h * SIMCC_SPLIT])]
    return g.model(nodes, inits, [g.value_info("input", ["batch", 3, h, w])], outputs)


def make_tiny(repo: str, folder: Path, *, seed: int = 0) -> None:
    """Write the random stand-ins of ``repo`` (:data:`DWPOSE_REPO`) into ``folder``."""
    if repo != DWPOSE_REPO:
        raise ValueError(f"the keypoint plugin makes no stand-in for {repo!r}")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DETECTOR_FILE).write_bytes(detector_graph(rng))
    (folder / POSE_FILE).write_bytes(pose_graph(rng))
