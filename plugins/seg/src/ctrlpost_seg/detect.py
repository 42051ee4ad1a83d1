"""Boxes for a text prompt on one frame: GroundingDINO, with the reference's thresholds.

The reference's SAM2 helper finds the objects it tracks on the clip's first frame with
``IDEA-Research/grounding-dino-tiny``: a query is kept when its best token probability exceeds
the box threshold (0.15), and named by the prompt tokens above the text threshold (0.25). When
nothing passes, it post-processes the same outputs again at 0.1 / 0.1. :func:`detect` does the
same, but names **each** box by its own tokens (the reference names every object after the first
box's label), leaving out periods and special tokens; a box none of whose tokens passes the text
threshold is named by the prompt phrase holding its most probable token, so no object has an
empty phrase.

torch and transformers are imported when a detector is loaded, never at module import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

BOX_THRESHOLD, TEXT_THRESHOLD = 0.15, 0.25
FALLBACK_BOX_THRESHOLD, FALLBACK_TEXT_THRESHOLD = 0.1, 0.1


@dataclass(frozen=True)
class Detection:
    """One box found on a frame: the phrase it matched and its corners in pixels."""

    phrase: str
    box_xyxy: tuple[float, float, float, float]  # x0, y0, x1, y1 in the frame's pixels
    score: float


@dataclass(frozen=True, eq=False)
class Detector:
    """A loaded GroundingDINO model and its processor (tokenizer and image processor)."""

    model: Any
    processor: Any
    device: str
    dtype: torch.dtype


def load_detector(folder: Path, device: str, dtype: torch.dtype) -> Detector:
    """GroundingDINO and its processor from a local folder (``from_pretrained``), in eval mode."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    processor = AutoProcessor.from_pretrained(folder)
    model: Any = GroundingDinoForObjectDetection.from_pretrained(folder, dtype=dtype)
    return Detector(model=model.to(device).eval(), processor=processor, device=device,
                    dtype=dtype)


def caption(prompt: str) -> str:
    """The prompt as GroundingDINO expects it: lower case, ending with a period."""
    text = prompt.strip().lower()
    return text if text.endswith(".") else text + "."


def detect(detector: Detector, frame_H_W_C: np.ndarray, prompt: str, *,
           box_threshold: float = BOX_THRESHOLD, text_threshold: float = TEXT_THRESHOLD,
           fallback: tuple[float, float] | None = (FALLBACK_BOX_THRESHOLD,
                                                   FALLBACK_TEXT_THRESHOLD),
           ) -> list[Detection]:
    """The boxes GroundingDINO finds for ``prompt`` on an RGB uint8 frame ``[H, W, 3]``.

    Thresholds as the reference's (``fallback``: the thresholds tried when nothing passes the
    first ones; None tries none). Boxes come in GroundingDINO's query order.
    """
    import torch

    height, width = frame_H_W_C.shape[:2]
    inputs = detector.processor(images=frame_H_W_C, text=caption(prompt), return_tensors="pt")
    inputs = inputs.to(detector.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(detector.dtype)
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    tries = [(box_threshold, text_threshold)] + ([fallback] if fallback is not None else [])
    for boxes_at, text_at in tries:
        result = detector.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=boxes_at, text_threshold=text_at,
            target_sizes=[(height, width)])[0]
        if len(result["boxes"]):
            break
    else:
        return []
    probs_Q_L = torch.sigmoid(outputs.logits[0])  # as the post-processing keeps its queries
    kept_probs = probs_Q_L[probs_Q_L.max(dim=-1).values > boxes_at].float().cpu()
    input_ids = inputs["input_ids"][0].tolist()
    phrases = _phrase_positions(input_ids, detector.processor.tokenizer)
    return [
        Detection(
            phrase=_name(token_probs, text_at, input_ids, phrases, detector.processor.tokenizer),
            box_xyxy=tuple(float(v) for v in box.tolist()),  # type: ignore[arg-type]
            score=float(score),
        )
        for box, score, token_probs in zip(result["boxes"].float().cpu(),
                                           result["scores"].float().cpu(), kept_probs,
                                           strict=True)
    ]


def _phrase_positions(input_ids: list[int], tokenizer: Any) -> list[list[int]]:
    """The token positions of each phrase of the prompt (the tokens between periods)."""
    delimiters = set(tokenizer.all_special_ids) | set(tokenizer.convert_tokens_to_ids([".", "?"]))
    phrases: list[list[int]] = [[]]
    for position, token in enumerate(input_ids):
        if token not in delimiters:
            phrases[-1].append(position)
        elif phrases[-1]:
            phrases.append([])
    return [positions for positions in phrases if positions]


def _name(token_probs: torch.Tensor, text_threshold: float, input_ids: list[int],
          phrases: list[list[int]], tokenizer: Any) -> str:
    """A box's phrase: its prompt tokens above the text threshold (periods and special tokens
    left out), or else the prompt phrase holding its most probable token."""
    above = [p for positions in phrases for p in positions if token_probs[p] > text_threshold]
    if not above and phrases:
        above = max(phrases, key=lambda positions: max(float(token_probs[p]) for p in positions))
    return str(tokenizer.decode([input_ids[p] for p in above])).strip()
