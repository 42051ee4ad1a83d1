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
from ctrlpost_seg.track import pixel_values, track  # noqa: E402

T, H, W = 8, 48, 64
SIZE = 64  # SAM2's input frame size here (1024 for the real model)
QUERIES = 6  # GroundingDINO's detection slots here (900 for the real model)
WORDS = ["person", "car", "tree", "traffic", "light", "dog"]
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103,
            ".": 1012, "?": 1029}  # GroundingDINO's delimiters are BERT's ids 101, 102, 1012, 1029


def bert_vocab() -> dict[str, int]:
    vocab = dict(BERT_IDS)
    for index, word in enumerate(WORDS):
        vocab[word] = 2000 + index
    taken = set(vocab.values())
    for index in range(max(taken) + 1):
        if index not in taken:
            vocab[f"[unused{index}]"] = index
    return vocab


def build_tokenizer():  # type: ignore[no-untyped-def]
    """A BERT-like uncased WordPiece tokenizer made locally with the tokenizers library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = bert_vocab()
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", model_input_names=["input_ids",
                                                                  "token_type_ids",
                                                                  "attention_mask"])


def save_tiny_grounding_dino(folder: Path) -> None:
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    backbone = SwinConfig(image_size=SIZE, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=2,
                          out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(bert_vocab()), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=QUERIES, d_model=32,
        encoder_layers=1, decoder_layers=2,  # decoder box heads are tied: 2 layers at least
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_n_points=1, decoder_n_points=1, max_text_len=64)
    with torch.random.fork_rng():  # the other tests' torch generator stays as it was
        torch.manual_seed(0)
        GroundingDinoForObjectDetection(config).save_pretrained(folder)
    images = GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 128})
    GroundingDinoProcessor(image_processor=images, tokenizer=build_tokenizer()).save_pretrained(
        folder)


def save_tiny_sam2_video(folder: Path) -> None:
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    hiera = Sam2HieraDetConfig(
        hidden_size=8, image_size=[SIZE, SIZE], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2])
    # SAM2's memory is 64 channels wide (its cross-attention reads 64) and each object pointer
    # is split into 64-channel tokens: the model width D must be a larger multiple of 64 (equal
    # widths leave the pointers unsplit, which transformers' code does not expect).
    D = 128
    vision = Sam2VisionConfig(
        backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=D,
        backbone_feature_sizes=[[SIZE // 4] * 2, [SIZE // 8] * 2, [SIZE // 16] * 2])
    config = Sam2VideoConfig(
        vision_config=vision, image_size=SIZE, num_maskmem=3,
        prompt_encoder_config={"hidden_size": D, "image_size": SIZE, "patch_size": 16,
                               "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": D, "mlp_dim": 32, "num_attention_heads": 2,
                             "iou_head_hidden_dim": 16},
        memory_attention_hidden_size=D, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[SIZE // 16, SIZE // 16],
        memory_encoder_hidden_size=D, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=D, memory_fuser_embed_dim=D,
        memory_fuser_intermediate_dim=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        Sam2VideoModel(config).save_pretrained(folder)
    Sam2VideoVideoProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)


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
