"""Speed of the seg annotator on one 720p clip, against the reference's way (one frame per call).

Random networks of the released architectures stand in for the released weights, which cannot
be fetched on the GPU machines; the work per frame is the same:

* GroundingDINO-tiny (``IDEA-Research/grounding-dino-tiny``'s config.json: Swin-T backbone,
  BERT-base text encoder, 900 queries, 6+6 layers of width 256), with a local WordPiece
  tokenizer that knows only the prompt's words and BERT's special ids (the approach of the
  plugin's tests): the text encoder's cost depends on the number of tokens, not on the size of
  the vocabulary, and the prompt's tokens are the same;
* SAM2 hiera-large (``facebook/sam2-hiera-large``: Hiera 144 wide, stages 2/6/36/4, heads
  2/4/8/16, windows 8/4/16/8, global blocks 23/33/43; 1024x1024 input; 7 memory frames).

For a 121-frame 1280x720 clip of three moving shapes and a three-phrase prompt it times

* GroundingDINO on frame 0, as :func:`ctrlpost_seg.detect.detect` runs it (random weights find
  arbitrary boxes, so the shapes' own boxes on frame 0 are what both ways track);
* the reference's way: SAM2's video predictor with one frame per call, written here with
  transformers' public API: every frame prepared on the CPU as its video loader does (PIL
  resize to 1024x1024 with PIL's default filter, /255, normalised) and the whole clip handed to
  the session; each box added on frame 0 with a forward there, as ``add_new_points_or_box``
  does; propagation frame by frame; each object's logits resized bilinearly to the clip, > 0,
  copied to the CPU per object and frame;
* :func:`ctrlpost_seg.track.track` (the producer's tracking, as `ctrlpost annotate` runs it) at
  several batch sizes;
* the seg file written from the masks (``write_seg_pickle``), when pydantic and pycocotools are
  installed (the GPU machines have neither; the JSON then says so),

and compares the masks (IoU per object over the clip) with the reference's and with batch 1's.
``ctrlpost annotate`` runs detection, tracking and the write in this order for each clip.

    python plugins/seg/bench/annotate_speed.py --device cuda --out result.json
    python plugins/seg/bench/annotate_speed.py --device cpu --frames 5 --tiny  # smoke test

``--tiny`` uses the plugin tests' tiny configs. Only numpy, torch, transformers and tokenizers
are needed: ``ctrlpost_seg.detect`` and ``ctrlpost_seg.track`` are imported without the
package's ``__init__``, which registers the modality and needs pydantic.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

DETECTOR_REPO = "IDEA-Research/grounding-dino-tiny"
TRACKER_REPO = "facebook/sam2-hiera-large"
PROMPT = "person. car. traffic light."  # three phrases


def seg_module(name: str) -> Any:
    """``ctrlpost_seg.<name>`` without running ``ctrlpost_seg/__init__.py`` (it needs pydantic)."""
    if "ctrlpost_seg" not in sys.modules:
        spec = importlib.util.find_spec("ctrlpost_seg")  # finds the package, runs nothing
        if spec is None or spec.submodule_search_locations is None:
            raise SystemExit("ctrlpost_seg is not installed: pip install -e plugins/seg")
        package = types.ModuleType("ctrlpost_seg")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["ctrlpost_seg"] = package
    return importlib.import_module(f"ctrlpost_seg.{name}")


def prompt_tokenizer() -> Any:
    """The plugin's stand-in BERT tokenizer (WordPiece, BERT's special ids) of the prompt's
    words."""
    words = sorted(set(PROMPT.replace(".", " ").split()))
    return seg_module("tiny_models").build_tokenizer(words)


def save_grounding_dino(folder: Path, tiny: bool) -> None:
    """A random GroundingDINO of the released config (or the tests' tiny one) and its processor."""
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    if tiny:
        seg_module("tiny_models").save_tiny_grounding_dino(folder)
        return
    levels: dict[str, Any] = {"out_features": ["stage2", "stage3", "stage4"]}  # stages read
    backbone = SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
                          num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0, **levels)
    text = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=512)  # bert-base-uncased
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=900, d_model=256,
        encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_n_points=4,
        decoder_n_points=4, num_feature_levels=4, max_text_len=256, two_stage=True,
        decoder_bbox_embed_share=True, two_stage_bbox_embed_share=False,
        embedding_init_target=True, query_dim=4, positional_embedding_temperature=20,
        activation_function="relu", layer_norm_eps=1e-5)
    sizes = {"shortest_edge": 800, "longest_edge": 1333}
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=grounding_dino_images(sizes),
                           tokenizer=prompt_tokenizer()).save_pretrained(folder)


def grounding_dino_images(sizes: dict[str, int]) -> Any:
    """The image processor the released folder loads: torchvision's where it is installed."""
    if importlib.util.find_spec("torchvision") is not None:
        from transformers.models.grounding_dino.image_processing_grounding_dino import (
            GroundingDinoImageProcessor,
        )

        return GroundingDinoImageProcessor(size=sizes)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    return GroundingDinoImageProcessorPil(size=sizes)


def save_sam2(folder: Path, tiny: bool) -> None:
    """A random SAM2 video model of hiera-large's config (or the tests' tiny one)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    if tiny:
        seg_module("tiny_models").save_tiny_sam2_video(folder)
        return
    size = 1024
    hiera = Sam2HieraDetConfig(
        hidden_size=144, num_attention_heads=2, image_size=[size, size],
        blocks_per_stage=[2, 6, 36, 4], embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16], window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7])
    vision = Sam2VisionConfig(
        backbone_config=hiera, backbone_channel_list=[1152, 576, 288, 144],
        backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]], fpn_hidden_size=256,
        fpn_top_down_levels=[2, 3])
    config = Sam2VideoConfig(  # SAM2 (not 2.1): no temporal pointer encoding, no occlusion
        vision_config=vision, image_size=size, num_maskmem=7,
        enable_temporal_pos_encoding_for_object_pointers=False,
        enable_occlusion_spatial_embedding=False, memory_attention_num_layers=4,
        memory_attention_hidden_size=256, memory_attention_feed_forward_hidden_size=2048,
        memory_encoder_output_channels=64, sigmoid_scale_for_mem_enc=20.0,
        sigmoid_bias_for_mem_enc=-10.0)
    torch.manual_seed(0)
    Sam2VideoModel(config).save_pretrained(folder)
    Sam2VideoVideoProcessor(size={"height": size, "width": size}).save_pretrained(folder)


def clip(T: int, H: int, W: int) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Three shapes moving over a textured background (RGB uint8 ``[T, H, W, 3]``), and each
    shape's box ``(x0, y0, x1, y1)`` on frame 0."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    background = np.stack([x / W * 160, y / H * 160, 60 + 40 * np.sin(x / 37) * np.cos(y / 23)],
                          -1)
    frames = np.empty((T, H, W, 3), np.uint8)
    boxes: list[tuple[float, float, float, float]] = []
    for t in range(T):
        cx, cy = W * 0.2 + 5 * t, H * 0.5 + H * 0.15 * np.sin(t / 10)
        shapes = [
            (((x - cx) ** 2 + (y - cy) ** 2) < (H / 8) ** 2, (230, 60, 50)),  # disc
            ((np.abs(x - W * 0.7 + 3 * t) < W / 10) & (np.abs(y - H * 0.3) < H / 10),
             (40, 200, 90)),  # rectangle
            ((y > H * 0.6 + 2 * t % (H * 0.2)) & (y < H * 0.9)
             & (np.abs(x - W * 0.5) < (y - H * 0.6) * 0.8), (240, 220, 60)),  # triangle
        ]
        frame = background.copy()
        for mask, colour in shapes:
            frame[mask] = colour
            if t == 0:
                rows, cols = np.nonzero(mask)
                boxes.append((float(cols.min()), float(rows.min()), float(cols.max()),
                              float(rows.max())))
        frames[t] = np.clip(frame + rng.normal(0, 4, (H, W, 1)), 0, 255)
    return frames, boxes


def reference_way(tracker: Any, frames: np.ndarray, boxes: list) -> tuple[Any, float]:
    """SAM2's video predictor, one frame per call (see the module's docstring): the masks
    (PackedMasks) and the seconds spent preparing the frames on the CPU."""
    from PIL import Image
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    track = seg_module("track")
    num_frames, height, width = frames.shape[:3]
    size_h, size_w = tracker.size_hw
    start = time.perf_counter()
    video = torch.empty((num_frames, 3, size_h, size_w), dtype=torch.float32)
    for t, frame in enumerate(frames):  # the predictor's loader: PIL's default filter (bicubic)
        image = np.asarray(Image.fromarray(frame).resize((size_w, size_h)), np.float32) / 255.0
        video[t] = torch.from_numpy(image).permute(2, 0, 1)
    video = (video - torch.tensor(tracker.mean).view(3, 1, 1)) / torch.tensor(
        tracker.std).view(3, 1, 1)
    prepare_s = time.perf_counter() - start
    session = Sam2VideoInferenceSession(  # the predictor keeps the clip on the device
        video=video, video_height=height, video_width=width, inference_device=tracker.device,
        inference_state_device=tracker.device, video_storage_device=tracker.device,
        dtype=tracker.dtype)
    scale = torch.tensor([size_w / width, size_h / height])
    packed = np.zeros((len(boxes), num_frames, height, (width + 7) // 8), np.uint8)
    with torch.inference_mode():
        for obj_id, box in enumerate(boxes):  # add_new_points_or_box: a forward on frame 0
            obj_idx = session.obj_id_to_idx(obj_id)
            session.add_point_inputs(obj_idx, 0, {
                "point_coords": torch.tensor(box, dtype=torch.float32).view(1, 1, 2, 2) * scale,
                "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)})
            session.obj_with_new_inputs = [obj_id]
            tracker.model(inference_session=session, frame_idx=0)
        for output in tracker.model.propagate_in_video_iterator(session, start_frame_idx=0):
            logits = torch.nn.functional.interpolate(
                output.pred_masks.float(), (height, width), mode="bilinear", align_corners=False)
            for index in range(len(boxes)):
                mask = (logits[index, 0] > 0.0).cpu().numpy()
                packed[index, output.frame_idx] = np.packbits(mask, axis=-1)
    return track.PackedMasks(packed, width), prepare_s


def agreement(ours: Any, theirs: Any, objects: int) -> dict[str, object]:
    """IoU per object over the whole clip (1.0 where both masks are empty), pixels that differ,
    and the share of the clip each of our masks covers."""
    ious, covers, differing = [], [], 0
    for index in range(objects):
        a, b = ours.mask(index), theirs.mask(index)
        union = int(np.count_nonzero(a | b))
        ious.append(1.0 if union == 0 else round(np.count_nonzero(a & b) / union, 6))
        covers.append(round(np.count_nonzero(a) / a.size, 4))
        differing += int(np.count_nonzero(a ^ b))
    return {"iou_per_object": ious, "pixels_differing": differing, "mask_cover": covers}


def timed(fn: Callable[[], Any], sync: bool) -> tuple[Any, float, float | None]:
    """``fn()``, its seconds, and the GPU memory it peaked at (GiB; None on the CPU)."""
    if sync:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if sync:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if sync else None
    return result, seconds, peak


def writer() -> tuple[Callable[[Path, Any], None] | None, str]:
    """The plugin's seg-file writer, when its imports (pydantic, pycocotools) are installed."""
    missing = [name for name in ("pydantic", "pycocotools")
               if importlib.util.find_spec(name) is None]
    if missing:
        return None, f"not timed: {', '.join(missing)} not installed"
    return seg_module("seg_file").write_seg_pickle, "write_seg_pickle"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny configs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    detect, track = seg_module("detect"), seg_module("track")
    sync = args.device.startswith("cuda")
    dtype = torch.float16 if sync else torch.float32  # as the annotator loads them
    frames, boxes = clip(args.frames, 720, 1280)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {repo: Path(tmp) / repo for repo in (DETECTOR_REPO, TRACKER_REPO)}
        save_grounding_dino(folders[DETECTOR_REPO], args.tiny)
        save_sam2(folders[TRACKER_REPO], args.tiny)
        detector = detect.load_detector(folders[DETECTOR_REPO], args.device, dtype)
        tracker = track.load_tracker(folders[TRACKER_REPO], args.device, dtype)
    detect.detect(detector, frames[0], PROMPT)  # warm-up
    track.track(tracker, frames[:2], boxes, 2)
    found, detect_s, detect_peak = timed(lambda: detect.detect(detector, frames[0], PROMPT), sync)
    (reference, prepare_s), reference_s, reference_peak = timed(
        lambda: reference_way(tracker, frames, boxes), sync)
    import transformers

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if sync else "cpu", "dtype": str(dtype),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "models": "tiny configs" if args.tiny else f"random {DETECTOR_REPO}, {TRACKER_REPO}",
        "frames": args.frames, "size": "1280x720", "objects": len(boxes), "prompt": PROMPT,
        "grounding_dino": {
            "s": round(detect_s, 3), "peak_gpu_gib": detect_peak,
            "boxes_found": len(found),  # random weights: arbitrary boxes, not tracked
            "image_processor": type(detector.processor.image_processor).__name__},
        "reference_way": {"track_s": round(reference_s, 3),
                          "of_which_cpu_frame_preparation_s": round(prepare_s, 3),
                          "frames_per_s": round(args.frames / reference_s, 2),
                          "with_grounding_dino_frames_per_s": round(
                              args.frames / (reference_s + detect_s), 2),
                          "peak_gpu_gib": reference_peak},
        "plugin": {}}
    first = None
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        packed, seconds, peak = timed(
            lambda b=batch_size: track.track(tracker, frames, boxes, b), sync)  # type: ignore[misc]
        first = first or packed
        report["plugin"][str(batch_size)] = {
            "track_s": round(seconds, 3), "frames_per_s": round(args.frames / seconds, 2),
            "speedup": round(reference_s / seconds, 2),
            "with_grounding_dino_frames_per_s": round(args.frames / (seconds + detect_s), 2),
            "with_grounding_dino_speedup": round((reference_s + detect_s) / (seconds + detect_s),
                                                 2),
            "peak_gpu_gib": peak,
            "vs_reference": agreement(packed, reference, len(boxes)),
            "vs_first_batch_size": agreement(packed, first, len(boxes))}
    write, how = writer()
    report["write"] = {"how": how}
    if write is not None and first is not None:
        masks = first
        with tempfile.TemporaryDirectory() as tmp:
            def write_file() -> None:  # one mask unpacked at a time, as annotate does
                write(Path(tmp) / "clip.pickle", ((f"shape {index}", masks.mask(index))
                                                  for index in range(len(boxes))))

            _, write_s, _ = timed(write_file, False)
        report["write"]["s"] = round(write_s, 3)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
