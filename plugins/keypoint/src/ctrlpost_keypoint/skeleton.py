"""The OpenPose-134 skeleton the keypoint hint is drawn in: joint order, colours, links.

Annotations are COCO-WholeBody (133 joints: 17 body, 6 feet, 68 face, 21 left hand, 21 right
hand). The hint uses OpenPose order instead: a neck joint is added (the mean of the shoulders,
with the lower shoulder confidence) and the 17 body joints are reordered as OpenPose-18 numbers
them; feet, face and hands follow unchanged, so OpenPose index i >= 18 is COCO index i - 1.

Colours are RGB (the hint's channel order). Body joints and links use the OpenPose colour wheel;
foot joints are black (drawn, so they can blacken pixels drawn before them), face joints white,
hand joints blue. Two link colours break the wheel, as in the reference's table: neck-left hip
is (0, 255, 225) and the right middle finger's second segment is white.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

NECK = -1
"""Stands for the computed neck in :data:`COCO_OF_OPENPOSE`."""

# OpenPose-18 body order: nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist,
# right hip/knee/ankle, left hip/knee/ankle, right eye, left eye, right ear, left ear.
_BODY = (0, NECK, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

COCO_OF_OPENPOSE: tuple[int, ...] = _BODY + tuple(range(17, 133))
"""For each of the 134 OpenPose joints, the COCO-WholeBody row it comes from (or NECK)."""

LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6  # COCO rows

_WHEEL_18 = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
JOINT_COLORS: tuple[tuple[int, int, int], ...] = (
    _WHEEL_18 + ((0, 0, 0),) * 6 + ((255, 255, 255),) * 68 + ((0, 0, 255),) * 42
)
"""RGB colour of each OpenPose-134 joint's dot."""

_BODY_LINKS = (
    ((1, 2), (255, 0, 0)), ((1, 5), (255, 85, 0)), ((2, 3), (255, 170, 0)),
    ((3, 4), (255, 255, 0)), ((5, 6), (170, 255, 0)), ((6, 7), (85, 255, 0)),
    ((1, 8), (0, 255, 0)), ((8, 9), (0, 255, 85)), ((9, 10), (0, 255, 170)),
    ((1, 11), (0, 255, 225)), ((11, 12), (0, 170, 255)), ((12, 13), (0, 85, 255)),
    ((1, 0), (0, 0, 255)), ((0, 14), (255, 0, 170)), ((14, 16), (170, 0, 255)),
    ((0, 15), (255, 0, 255)), ((15, 17), (255, 0, 170)),
)
# A hand's 20 links: thumb, forefinger, middle, ring, pinky, each root->1, 1->2, 2->3, 3->4.
_HAND_LINK_COLORS = (
    (255, 0, 0), (255, 76, 0), (255, 153, 0), (255, 230, 0), (204, 255, 0), (128, 255, 0),
    (51, 255, 0), (0, 255, 26), (0, 255, 102), (0, 255, 178), (0, 255, 255), (0, 178, 255),
    (0, 102, 255), (0, 26, 255), (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230),
    (255, 0, 153), (255, 0, 76),
)
LEFT_HAND_ROOT, RIGHT_HAND_ROOT = 92, 113  # OpenPose indices; each finger's 4 joints follow
_RIGHT_MIDDLE_2_TO_3 = 10  # position among a hand's links of the one drawn white on the right


def _hand_links(root: int) -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    pairs = []
    for finger in range(5):
        joints = [root] + [root + 1 + 4 * finger + j for j in range(4)]
        pairs += list(pairwise(joints))
    colors = list(_HAND_LINK_COLORS)
    if root == RIGHT_HAND_ROOT:
        colors[_RIGHT_MIDDLE_2_TO_3] = (255, 255, 255)
    return list(zip(pairs, colors, strict=True))


LINKS: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = (
    _BODY_LINKS + tuple(_hand_links(LEFT_HAND_ROOT)) + tuple(_hand_links(RIGHT_HAND_ROOT))
)
"""The 57 links, in drawing order: ((OpenPose joint a, joint b), RGB colour)."""


def to_openpose(body_133_3: np.ndarray) -> np.ndarray:
    """COCO-WholeBody rows ``[133, 3]`` (x, y, confidence; float64, already in pixels) as the
    134 OpenPose joints ``[134, 3]``.

    The neck's x and y are the mean of the shoulders' (computed after scaling to pixels, as
    the reference does) and its confidence is the lower of the two shoulders'.
    """
    shoulders_2_3 = body_133_3[[LEFT_SHOULDER, RIGHT_SHOULDER]]
    neck_3 = np.mean(shoulders_2_3, axis=0)
    left, right = shoulders_2_3[:, 2]
    neck_3[2] = right if left > right else left
    rows = [neck_3 if j == NECK else body_133_3[j] for j in COCO_OF_OPENPOSE]
    return np.stack(rows)
