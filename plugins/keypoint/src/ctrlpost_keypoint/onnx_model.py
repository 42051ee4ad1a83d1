"""An ONNX model run by onnxruntime on the annotation device, in batches of any size.

ONNX exports often fix the batch dimension (the DWPose files take exactly one image); a model
with a named (dynamic) batch dimension takes ``batch_size`` images per call, one with a fixed
batch ``b`` takes ``b`` (the last call zero-padded). Imported only when annotating: it imports
onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf, NoSuchFile

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass(frozen=True)
class OnnxModel:
    """One inference session and the shape of its single image input ``[B, 3, H, W]``."""

    session: Any  # onnxruntime.InferenceSession
    path: Path
    input_name: str
    fixed_batch: int | None  # None: any batch size
    input_hw: tuple[int, int]

    def output_shapes(self) -> list[list[int | str | None]]:
        """The declared shape of each output (a str or None where it is dynamic)."""
        return [list(out.shape) for out in self.session.get_outputs()]

    def run(self, x_B_C_H_W: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Every output for the whole input, computed ``batch_size`` images at a time (or the
        model's fixed batch), concatenated along the batch axis."""
        step = self.fixed_batch or max(1, batch_size)
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(x_B_C_H_W), step):
            chunk = np.ascontiguousarray(x_B_C_H_W[start:start + step], dtype=np.float32)
            real = len(chunk)
            if self.fixed_batch and real < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - real, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            outputs = self.session.run(None, {self.input_name: chunk})
            chunks.append([np.asarray(out)[:real] for out in outputs])
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def providers_for(device: str) -> list[Any]:
    """onnxruntime's execution providers for a torch-style device (``cpu``, ``cuda``,
    ``cuda:N``); raises RuntimeError naming the fix when this onnxruntime cannot use it."""
    if device == "cpu":
        return [CPU]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise RuntimeError(f"the keypoint annotator runs on 'cpu', 'cuda' or 'cuda:N', not "
                           f"{device!r}")
    available = ort.get_available_providers()
    if CUDA not in available:
        raise RuntimeError(
            f"onnxruntime {ort.__version__} here cannot use the GPU (its providers: "
            f"{', '.join(available)}); install onnxruntime-gpu in place of onnxruntime "
            "(`pip uninstall -y onnxruntime && pip install onnxruntime-gpu`), or annotate on "
            "the CPU")
    return [(CUDA, {"device_id": int(index or 0)}), CPU]


def open_model(path: Path, device: str) -> OnnxModel:
    """Load ``path`` for ``device``; its input must be one ``[B, 3, H, W]`` image batch with
    fixed H and W. A file that is not such a model raises ValueError; a device onnxruntime
    cannot use, RuntimeError (naming the fix)."""
    providers = providers_for(device)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-node placement warnings
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except (InvalidProtobuf, InvalidGraph, NoSuchFile) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a loadable ONNX model ({first})") from exc
    if device != "cpu" and CUDA not in session.get_providers():
        raise RuntimeError(f"{path.name}: onnxruntime could not start CUDA and fell back to "
                           "the CPU (are the CUDA and cuDNN libraries onnxruntime-gpu needs "
                           "installed?); fix that, or annotate on the CPU")
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
        raise ValueError(f"{path}: expected one image input [batch, 3, H, W] with fixed H "
                           f"and W, found {[(i.name, i.shape) for i in inputs]}")
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return OnnxModel(session=session, path=Path(path), input_name=inputs[0].name,
                     fixed_batch=fixed, input_hw=(int(shape[2]), int(shape[3])))
