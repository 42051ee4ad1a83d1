"""The ``seg`` control modality: Cosmos-Transfer1's segmentation hint, from per-clip RLE masks.

Each clip has ``seg/<clip>.pickle`` (one run-length-encoded whole-clip mask per object, see
:mod:`ctrlpost_seg.seg_file`). A sample paints a random subset of the objects in random colours
on black (:mod:`ctrlpost_seg.hints`). :func:`synthesize_seg` writes a pseudo file for a synthetic
clip (``SEG_FILE.synthesize``); `ctrlpost annotate` writes real files with GroundingDINO and
SAM2 (``SEG_FILE.annotator``, :mod:`ctrlpost_seg.annotate`). Registered through the ``ctrlpost``
entry-point group; this module is the plugin. Importing it loads neither torch, transformers,
cv2 nor pycocotools.
"""

from __future__ import annotations

from ctrlpost.modalities import ExactOn, HintFile, Modality, hookimpl
from ctrlpost.modalities.safe_pickle import load_pickle
from ctrlpost_seg.annotate import ANNOTATOR
from ctrlpost_seg.hints import SegHints, build_generator, hsv_to_rgb_uint8
from ctrlpost_seg.params import SegParams
from ctrlpost_seg.seg_file import SegMasks, SegObject, check_seg, read_seg, write_seg_pickle
from ctrlpost_seg.synthesize import synthesize_seg

__all__ = [
    "SEG",
    "SEG_FILE",
    "SegHints",
    "SegMasks",
    "SegObject",
    "SegParams",
    "build_generator",
    "check_seg",
    "hsv_to_rgb_uint8",
    "load_pickle",
    "read_seg",
    "synthesize_seg",
    "write_seg_pickle",
]

SEG_FILE = HintFile(
    folder="seg",
    suffix=".pickle",
    read=read_seg,
    check=check_seg,
    made_by="ctrlpost annotate RECIPE",
    synthesize=synthesize_seg,
    annotator=ANNOTATOR,
)

SEG = Modality(
    name="seg",
    summary="Random objects of per-clip RLE masks in random flat colours (control_input_seg)",
    params_model=SegParams,
    # A FileHintGenerator (draw and render also take the file's content), which the
    # descriptor's annotation (HintGenerator) does not name.
    build_generator=build_generator,  # type: ignore[arg-type]
    hint_channels=3,
    hint_key="control_input_seg",
    hint_file=SEG_FILE,
    # Integer masking and Python float colours: no library's version changes the bytes.
    exact_on=(
        ExactOn("NumPy", "numpy", ">=1.26",
                why="the hint is integer masking; any NumPy the plugin installs with gives it"),
    ),
    released_control_file="seg_control.pt",
)


@hookimpl
def ctrlpost_register_modalities() -> list[Modality]:
    """Provide the ``seg`` modality."""
    return [SEG]
