"""The seg annotator on tiny random models of the real architectures (no download).

GroundingDINO (tiny Swin backbone, tiny BERT text encoder and a local WordPiece tokenizer whose
special and period ids are BERT's, which GroundingDINO's phrase masking relies on) and SAM2's
video model (tiny Hiera) are built from their configs, saved with ``save_pretrained`` and loaded
through the annotator's own ``load``. Random weights find arbitrary boxes, so detection is
checked against the model's own raw scores, and propagation is checked with given boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ctrlpost.modalities import ClipInfo, ClipWindow  # noqa: E402
from ctrlpost.modalities.safe_pickle import load_pickle  # noqa: E402
from ctrlpost_seg import SEG_FILE, SegParams, check_seg, read_seg  # noqa: E402
from ctrlpost_seg.annotate import (  # noqa: E402
    ANNOTATOR,
    DETECTOR_REPO,
    TRACKER_REPO,
    SegAnnotation,
    annotate_boxes,
    load,
)
from ctrlpost_seg.detect import Detection, caption, detect  # noqa: E402
from ctrlpost_seg.tiny_models import (  # noqa: E402
    QUERIES,
    SIZE,
    save_tiny_grounding_dino,
    save_tiny_sam2_video,
)
from ctrlpost_seg.track import pixel_values, track  # noqa: E402

T, H, W = 8, 48, 64
PARAMS = SegParams(prompt="Person. car. traffic light")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    folders = {DETECTOR_REPO: root / "grounding-dino", TRACKER_REPO: root / "sam2"}
    save_tiny_grounding_dino(folders[DETECTOR_REPO])
    save_tiny_sam2_video(folders[TRACKER_REPO])
    return folders


@pytest.fixture(scope="module")
def loaded(folders: dict[str, Path]) -> SegAnnotation:
    return load(folders, "cpu", PARAMS)


def clip() -> np.ndarray:
    """A bright square moving right over a dark gradient."""
    rng = np.random.default_rng(0)
    frames = np.zeros((T, H, W, 3), np.uint8)
    frames[...] = np.linspace(20, 80, W, dtype=np.uint8)[None, None, :, None]
    for t in range(T):
        frames[t, 10:30, 5 + 3 * t:25 + 3 * t] = (230, 200, 40)
    return frames + rng.integers(0, 3, frames.shape, dtype=np.uint8)


CLIP_INFO = ClipInfo(name="clip", frame_count=T, width=W, height=H, fps=24.0)


# --- the descriptor --------------------------------------------------------------------------

def test_the_hint_file_names_its_annotator() -> None:
    assert SEG_FILE.annotator is ANNOTATOR
    assert ANNOTATOR.models == ("IDEA-Research/grounding-dino-tiny", "facebook/sam2-hiera-large")
    assert SEG_FILE.made_by == "ctrlpost annotate RECIPE"


def test_the_prompt_parameter() -> None:
    assert SegParams().prompt.endswith(".")
    assert SegParams(prompt="dog").prompt == "dog"
    with pytest.raises(ValueError, match="at least one object"):
        SegParams(prompt=" . ")
    assert caption("Person. Car") == "person. car."


# --- loading ---------------------------------------------------------------------------------

def test_load_reads_both_models_in_float32_on_cpu(loaded: SegAnnotation) -> None:
    assert type(loaded.detector.model).__name__ == "GroundingDinoForObjectDetection"
    assert type(loaded.tracker.model).__name__ == "Sam2VideoModel"
    assert loaded.detector.dtype == loaded.tracker.dtype == torch.float32
    assert next(loaded.tracker.model.parameters()).dtype == torch.float32
    assert loaded.tracker.size_hw == (SIZE, SIZE) and loaded.prompt == "Person. car. traffic light"
    assert not loaded.detector.model.training and not loaded.tracker.model.training


# --- detection -------------------------------------------------------------------------------

def raw_scores(loaded: SegAnnotation, frame: np.ndarray) -> np.ndarray:
    """Each query's best token probability, straight from the model."""
    detector = loaded.detector
    inputs = detector.processor(images=frame, text=caption(loaded.prompt), return_tensors="pt")
    with torch.inference_mode():
        logits = detector.model(**inputs).logits[0]
    return torch.sigmoid(logits).max(dim=-1).values.numpy()


def test_detect_keeps_the_queries_above_the_box_threshold(loaded: SegAnnotation) -> None:
    frame = clip()[0]
    scores = np.sort(raw_scores(loaded, frame))[::-1]
    threshold = float(scores[2] + scores[3]) / 2  # keeps exactly three of the queries
    found = detect(loaded.detector, frame, loaded.prompt, box_threshold=threshold,
                   text_threshold=0.0, fallback=None)
    assert len(found) == 3
    np.testing.assert_allclose(sorted((d.score for d in found), reverse=True), scores[:3],
                               rtol=1e-5)
    for detection in found:
        assert len(detection.box_xyxy) == 4 and all(np.isfinite(detection.box_xyxy))
        # its tokens above the text threshold, here every one, periods and [CLS]/[SEP] left out
        assert detection.phrase == "person car traffic light"


def test_detect_falls_back_to_lower_thresholds(loaded: SegAnnotation) -> None:
    frame = clip()[0]
    top = float(raw_scores(loaded, frame).max())
    assert detect(loaded.detector, frame, loaded.prompt, box_threshold=top, fallback=None) == []
    found = detect(loaded.detector, frame, loaded.prompt, box_threshold=top,
                   fallback=(top - 1e-4, 0.1))
    assert len(found) >= 1


def test_each_box_is_named_by_its_own_phrase(loaded: SegAnnotation) -> None:
    """Above an impossible text threshold no token names a box: each box then takes the
    prompt phrase of its most probable token, a whole phrase of the prompt."""
    frame = clip()[0]
    found = detect(loaded.detector, frame, loaded.prompt, box_threshold=0.0,
                   text_threshold=1.0, fallback=None)
    assert len(found) == QUERIES  # every query of the tiny model
    assert {d.phrase for d in found} <= {"person", "car", "traffic light"}
    assert len({d.phrase for d in found}) > 1  # not every object named after the first


# --- propagation and the file ----------------------------------------------------------------

BOXES = [Detection("person", (5.0, 10.0, 25.0, 30.0), 0.9),
         Detection("car", (30.0, 5.0, 60.0, 40.0), 0.5),
         Detection("tree", (0.0, 0.0, 63.0, 47.0), 0.3)]


def test_annotate_boxes_writes_one_object_per_box(loaded: SegAnnotation, tmp_path: Path) -> None:
    path = tmp_path / "seg" / "clip.pickle"
    annotate_boxes(loaded.tracker, clip(), BOXES, path, batch_size=3)
    assert check_seg(path, CLIP_INFO) is None
    records = load_pickle(path)
    assert [r["phrase"] for r in records] == ["person", "car", "tree"]
    assert all(r["segmentation_mask_rle"]["mask_shape"] == (T, H, W) for r in records)
    masks = read_seg(path, ClipWindow(clip=CLIP_INFO, start=0, num_frames=T))
    assert masks.shape == (T, H, W) and len(masks.objects) == 3
    packed = track(loaded.tracker, clip(), [d.box_xyxy for d in BOXES], batch_size=8)
    for index in range(3):  # the file holds exactly the tracked masks, whatever the batch size
        np.testing.assert_array_equal(masks.mask(index), packed.mask(index))


def test_no_box_writes_an_empty_file(loaded: SegAnnotation, tmp_path: Path) -> None:
    path = tmp_path / "clip.pickle"
    annotate_boxes(loaded.tracker, clip(), [], path, batch_size=4)
    assert load_pickle(path) == [] and check_seg(path, CLIP_INFO) is None


def test_annotate_runs_both_models(loaded: SegAnnotation, tmp_path: Path) -> None:
    """The whole annotator at the reference's thresholds: one object per box found on frame 0."""
    path = tmp_path / "clip.pickle"
    ANNOTATOR.annotate(loaded, clip(), 24.0, path, 4)
    assert check_seg(path, CLIP_INFO) is None
    expected = detect(loaded.detector, clip()[0], loaded.prompt)
    assert expected  # random weights score high: the tiny model finds boxes
    assert [r["phrase"] for r in load_pickle(path)] == [d.phrase for d in expected]


def test_box_prompts_are_the_processors(loaded: SegAnnotation) -> None:
    """Box k prompts object k on frame 0 as Sam2VideoProcessor does: its corners scaled to the
    model's input size, labelled 2 and 3."""
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    from ctrlpost_seg.track import _prompt_boxes

    session = Sam2VideoInferenceSession(video_height=H, video_width=W)
    _prompt_boxes(session, loaded.tracker, [d.box_xyxy for d in BOXES], H, W)
    assert session.obj_ids == [0, 1, 2] and session.obj_with_new_inputs == [0, 1, 2]
    for index, detection in enumerate(BOXES):
        inputs = session.point_inputs_per_obj[index][0]
        x0, y0, x1, y1 = detection.box_xyxy
        expected = [[[[x0 * SIZE / W, y0 * SIZE / H], [x1 * SIZE / W, y1 * SIZE / H]]]]
        torch.testing.assert_close(inputs["point_coords"], torch.tensor(expected))
        assert inputs["point_labels"].tolist() == [[[2, 3]]]


@pytest.mark.gpu  # torchvision: no CPU build exists for the pinned torch; the GPU image has it
def test_track_equals_transformers_processor_path(loaded: SegAnnotation) -> None:
    """Sam2VideoProcessor's own path (it needs torchvision) gives the same frames (to the
    rounding of its uint8 resize) and, from the same frames, exactly the same masks."""
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size={"height": SIZE, "width": SIZE}),
        video_processor=Sam2VideoVideoProcessor(size={"height": SIZE, "width": SIZE}))
    frames = clip()
    theirs = processor.init_video_session(video=frames, dtype=torch.float32)
    ours = pixel_values(loaded.tracker, frames)
    for t in range(T):  # one uint8 step at most: 1/255 over the smallest std
        torch.testing.assert_close(theirs.processed_frames[t], ours[t], rtol=0, atol=0.0176)
        theirs.processed_frames[t] = ours[t]
    processor.add_inputs_to_inference_session(
        theirs, frame_idx=0, obj_ids=[0, 1, 2], input_boxes=[[list(d.box_xyxy) for d in BOXES]])
    packed = track(loaded.tracker, frames, [d.box_xyxy for d in BOXES], batch_size=T)
    with torch.inference_mode():
        for output in loaded.tracker.model.propagate_in_video_iterator(theirs, start_frame_idx=0):
            masks = processor.post_process_masks([output.pred_masks], [[H, W]])[0][:, 0]
            for index in range(3):
                np.testing.assert_array_equal(packed.mask(index)[output.frame_idx],
                                              masks[index].numpy())


@pytest.mark.gpu
def test_annotate_on_cuda_in_float16(folders: dict[str, Path], tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    on_gpu = load(folders, "cuda", PARAMS)
    assert on_gpu.detector.dtype == on_gpu.tracker.dtype == torch.float16
    assert next(on_gpu.detector.model.parameters()).dtype == torch.float16
    assert next(on_gpu.tracker.model.parameters()).is_cuda
    path = tmp_path / "clip.pickle"
    ANNOTATOR.annotate(on_gpu, clip(), 24.0, path, 3)
    assert check_seg(path, CLIP_INFO) is None
    annotate_boxes(on_gpu.tracker, clip(), BOXES, path, batch_size=3)
    assert check_seg(path, CLIP_INFO) is None and len(load_pickle(path)) == 3


def test_pixel_values_follow_the_video_processor(loaded: SegAnnotation) -> None:
    frames = clip()[:2]
    values = pixel_values(loaded.tracker, frames)
    assert values.shape == (2, 3, SIZE, SIZE) and values.dtype == torch.float32
    config = json.loads((Path(loaded.tracker.model.name_or_path)
                         / "video_preprocessor_config.json").read_text())
    # a pure black frame maps to -mean/std in every channel
    black = pixel_values(loaded.tracker, np.zeros((1, H, W, 3), np.uint8))[0]
    expected = -np.asarray(config["image_mean"]) / np.asarray(config["image_std"])
    np.testing.assert_allclose(black.mean(dim=(1, 2)).numpy(), expected, rtol=1e-6)
