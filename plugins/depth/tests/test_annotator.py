"""The depth annotator (`ctrlpost annotate` for depth): the tiny stand-in of Depth Anything V2
Small, and the file it writes against an independent computation done the reference's way (one
frame per model call, then one min-max over the clip)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from ctrlpost.modalities import ClipInfo, ClipWindow
from ctrlpost_depth import ANNOTATOR, DEPTH_FILE, check_depth, read_depth
from ctrlpost_depth.annotator import REPO, TINY_SIZE, DepthModel, load, make_tiny, predict

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / REPO
    make_tiny(REPO, folder)
    return folder


def frames(T: int = 7, H: int = 45, W: int = 83, seed: int = 3) -> np.ndarray:
    """RGB uint8 [T, H, W, 3]: a bright disc moving over a gradient, with grain (odd sides)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        disc = (y - H / 2) ** 2 + (x - 10 - 6 * t) ** 2 < (H / 4) ** 2
        base = np.stack([x * 2, y * 4, (x + y) % 256], -1) % 256
        out[t] = np.where(disc[..., None], 230, base) + rng.integers(0, 20, (H, W, 3))
    return out


def reference_levels(folder: Path, frames_T_H_W_C: np.ndarray, device: str = "cpu") -> np.ndarray:
    """uint8 [T, H, W] computed as the reference's producer does, independently of the plugin:
    per frame a PIL image through the processor and the network, the prediction resized to the
    frame bicubically, then the stacked clip min-maxed to 0..255 and truncated (float16 on
    CUDA, as the reference; float32 on CPU)."""
    import transformers
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {}
    processor = AutoImageProcessor.from_pretrained(str(folder), **backend)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModelForDepthEstimation.from_pretrained(str(folder)).to(device=device, dtype=dtype)
    depths = []
    for frame in frames_T_H_W_C:
        image = Image.fromarray(frame)
        inputs = processor(images=image, return_tensors="pt").to(device, dtype=dtype)
        with torch.no_grad():
            predicted = model(**inputs).predicted_depth
        prediction = torch.nn.functional.interpolate(predicted.unsqueeze(1),
                                                     size=image.size[::-1], mode="bicubic",
                                                     align_corners=False)
        depths.append(prediction.squeeze().cpu().numpy())
    return levels(np.stack(depths))


def levels(depth: np.ndarray) -> np.ndarray:
    """One min-max over the clip to 0..255, truncated, in the maps' dtype."""
    return ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).astype(np.uint8)


def test_make_tiny_saves_the_released_layout_deterministically(tiny_folder: Path,
                                                               tmp_path: Path) -> None:
    assert sorted(p.name for p in tiny_folder.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["model_type"] == "depth_anything"
    assert config["architectures"] == ["DepthAnythingForDepthEstimation"]
    assert config["backbone_config"]["hidden_size"] == 32
    processor = json.loads((tiny_folder / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "DPTImageProcessor"
    assert processor["size"] == {"height": TINY_SIZE, "width": TINY_SIZE}
    assert processor["keep_aspect_ratio"] and processor["ensure_multiple_of"] == 14
    again = tmp_path / "again"
    make_tiny(REPO, again)
    assert (again / "model.safetensors").read_bytes() == \
        (tiny_folder / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="no stand-in"):
        make_tiny("acme/other", tmp_path / "other")


def test_the_tiny_model_predicts_unit_sized_depth(tiny_folder: Path) -> None:
    model = load({REPO: tiny_folder}, "cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    depth = predict(model, frames(T=3), batch_size=2)
    assert depth.shape == (3, 45, 83) and depth.dtype == np.float32
    assert 0.1 < float(depth.std()) < 10  # float16 on a GPU keeps it (not ~1e-7)
    # the float16 path (as on CUDA) stays finite: no activation leaves float16's range
    half = DepthModel(model.processor, copy.deepcopy(model.network).half(), model.device,
                      torch.float16)
    depth16 = predict(half, frames(T=2), batch_size=2)
    assert depth16.dtype == np.float16 and np.isfinite(depth16).all()
    assert len(np.unique(levels(depth16))) > 50


def test_annotate_equals_the_reference_way_frame_by_frame(tiny_folder: Path,
                                                          tmp_path: Path) -> None:
    clip = frames()
    expected = reference_levels(tiny_folder, clip)
    assert len(np.unique(expected)) > 50  # a real map, not a constant
    model = ANNOTATOR.load({REPO: tiny_folder}, "cpu", None)
    path = DEPTH_FILE.path(tmp_path, "c")
    ANNOTATOR.annotate(model, clip, 24.0, path, 1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.mp4"]  # no temp left
    clip_info = ClipInfo(name="c", frame_count=7, width=83, height=45, fps=24.0)
    assert check_depth(path, clip_info) is None
    decoded = read_depth(path, ClipWindow(clip_info, 0, 7))
    # The writer is lossless: every pixel of every channel is the computed level.
    assert np.array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))


def test_batches_change_at_most_one_level_on_a_few_pixels(tiny_folder: Path,
                                                          tmp_path: Path) -> None:
    """Batched matrix products may round differently from one frame at a time (float32 on CPU:
    ~1e-6 relative), which could move a pixel across a level boundary now and then (on this
    clip none moves)."""
    clip = frames()
    model = ANNOTATOR.load({REPO: tiny_folder}, "cpu", None)
    one = predict(model, clip, batch_size=1)
    assert np.array_equal(predict(model, clip, batch_size=1), one)  # deterministic
    for batch_size in (3, 8):
        batched = levels(predict(model, clip, batch_size=batch_size))
        difference = np.abs(batched.astype(int) - levels(one))
        assert difference.max() <= 1
        assert (difference == 0).mean() > 0.999


@pytest.mark.gpu
def test_float16_on_cuda_matches_the_reference_way(tiny_folder: Path) -> None:
    """On CUDA the model runs in float16 like the reference's producer. One frame per call
    gives the reference's levels exactly; batches run other float16 kernels, which move levels
    by at most one (when the clip's minimum or maximum moves, many pixels move at once)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    clip = frames(T=9)
    expected = reference_levels(tiny_folder, clip, "cuda")
    model = load({REPO: tiny_folder}, "cuda")
    assert model.dtype == torch.float16
    single = predict(model, clip, batch_size=1)
    assert single.dtype == np.float16 and np.isfinite(single).all()
    assert np.array_equal(levels(single), expected)
    difference = np.abs(levels(predict(model, clip, batch_size=9)).astype(int) - expected)
    assert difference.max() <= 1
