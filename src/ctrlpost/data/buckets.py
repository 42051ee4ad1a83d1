"""Aspect-ratio buckets: the target frame size of a clip, and how the clip is fitted into it.

A clip goes to the bucket whose aspect ratio ``r`` is nearest to its own ``w/h`` by
``(w/h - r)²`` (the reference's rule); ties go to the first bucket in the order below. The frame
is then scaled, aspect preserved, to fit inside the bucket's box and reflection-padded to fill it.

Families (width × height; every side a multiple of 16 so that the 8× tokenizer and the 2×2
patches divide it):

====== ============ =========== =========== =========== ============
family 16:9         4:3         1:1         3:4         9:16
====== ============ =========== =========== =========== ============
720    1280 × 704   960 × 704   960 × 960   704 × 960   704 × 1280
480    848 × 480    640 × 480   640 × 640   480 × 640   480 × 848
256    448 × 256    336 × 256   336 × 336   256 × 336   256 × 448
128    224 × 128    176 × 128   176 × 176   128 × 176   128 × 224
====== ============ =========== =========== =========== ============

"720" is the reference's table ("720p" is 704 rows so that 704/8 = 88 latent rows). The smaller
families follow its pattern: the landscape buckets share the family's height, 1:1 is as wide as
4:3, portrait buckets are the landscape ones transposed, and widths are the nearest multiple of
16 to the ratio (16:9 of 128 rows is 224, i.e. 1.75). "128" is the CPU demo's family: its
128 × 72 synthetic clips go to 224 × 128 (scaled to 224 × 126, one padded row top and bottom).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrlpost.errors import DataError

ASPECT_RATIOS: dict[str, float] = {
    "16:9": 16 / 9,
    "4:3": 4 / 3,
    "1:1": 1.0,
    "3:4": 3 / 4,
    "9:16": 9 / 16,
}

# (width, height) of each bucket, per family.
FAMILIES: dict[str, dict[str, tuple[int, int]]] = {
    "720": {"16:9": (1280, 704), "4:3": (960, 704), "1:1": (960, 960), "3:4": (704, 960),
            "9:16": (704, 1280)},
    "480": {"16:9": (848, 480), "4:3": (640, 480), "1:1": (640, 640), "3:4": (480, 640),
            "9:16": (480, 848)},
    "256": {"16:9": (448, 256), "4:3": (336, 256), "1:1": (336, 336), "3:4": (256, 336),
            "9:16": (256, 448)},
    "128": {"16:9": (224, 128), "4:3": (176, 128), "1:1": (176, 176), "3:4": (128, 176),
            "9:16": (128, 224)},
}


@dataclass(frozen=True)
class Fit:
    """How a ``source_width × source_height`` frame is placed in its bucket.

    ``scaled_*`` is the size after the aspect-preserving resize; ``pad_*`` the reflected pixels
    on each side that make it exactly ``target_*``.
    """

    bucket: str
    source_width: int
    source_height: int
    target_width: int
    target_height: int
    scaled_width: int
    scaled_height: int
    pad_left: int
    pad_right: int
    pad_top: int
    pad_bottom: int

    @property
    def resized(self) -> bool:
        """Whether the frame changes size (otherwise the resize is a no-op)."""
        return (self.scaled_width, self.scaled_height) != (self.source_width, self.source_height)

    @property
    def shrinks(self) -> bool:
        """Whether the frame is larger than the box in some side (the hint is computed small)."""
        return self.source_width > self.target_width or self.source_height > self.target_height

    @property
    def image_size(self) -> list[float]:
        """``[H_target, W_target, H_content, W_content]`` (the reference's ``image_size``: the
        padded size, then the size of the real pixels inside it)."""
        return [float(self.target_height), float(self.target_width),
                float(self.scaled_height), float(self.scaled_width)]


def nearest_bucket(width: int, height: int) -> str:
    """Name of the aspect ratio nearest to ``width / height``."""
    if width <= 0 or height <= 0:
        raise DataError(f"invalid frame size {width}x{height}")
    ratio = width / height
    return min(ASPECT_RATIOS, key=lambda name: (ratio - ASPECT_RATIOS[name]) ** 2)


def bucket_size(resolution: str, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the bucket a ``width × height`` frame goes to in ``resolution``."""
    family = _family(resolution)
    return family[nearest_bucket(width, height)]


def fit(resolution: str, width: int, height: int) -> Fit:
    """Where a ``width × height`` frame lands in its bucket of family ``resolution``.

    Scale = min(W_t / W, H_t / H); each scaled side is ``int(x + 0.5)`` (the reference's rounding)
    and the remaining pixels are split evenly, the odd one going right/bottom.
    """
    bucket = nearest_bucket(width, height)
    target_width, target_height = _family(resolution)[bucket]
    scale = min(target_width / width, target_height / height)
    scaled_width = min(target_width, int(width * scale + 0.5))
    scaled_height = min(target_height, int(height * scale + 0.5))
    pad_w, pad_h = target_width - scaled_width, target_height - scaled_height
    return Fit(
        bucket=bucket,
        source_width=width,
        source_height=height,
        target_width=target_width,
        target_height=target_height,
        scaled_width=scaled_width,
        scaled_height=scaled_height,
        pad_left=pad_w // 2,
        pad_right=pad_w - pad_w // 2,
        pad_top=pad_h // 2,
        pad_bottom=pad_h - pad_h // 2,
    )


def _family(resolution: str) -> dict[str, tuple[int, int]]:
    try:
        return FAMILIES[resolution]
    except KeyError:
        raise DataError(f"unknown resolution family {resolution!r}",
                        hint=f"choose one of: {', '.join(FAMILIES)}") from None
