"""The ``synthetic`` source: procedural clips with true captions, no network, no files needed.

Each clip is a shape of one colour moving slowly from a random place over a background
(striped, checkered, dotted, or a plain gradient whose only edges are the shape's) while the
camera pans, drawn with numpy and OpenCV and written as mp4v by OpenCV (fast; its wheel cannot
write H.264). The shape moves :data:`SHAPE_SPEED` pixels a frame, slow enough that the video
tokenizer's 8-frame averages keep its outline sharp (a faster shape is smeared into a band that
no decoder can draw with sharp edges: the edge F1 of the tiny tokenizer's reconstruction, the
best score of the edge demo, was 0.44 at the earlier speed of half the frame per clip and is
about 0.9 now on plain backgrounds).
Everything is drawn from ``numpy.random.default_rng([seed, index])``: the same ``[job].seed``
gives byte-identical files, another seed gives other clips, and clips do not depend on each
other or on the order the worker threads run them in.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.data.fetch.failures import ClipError, FailureKind
from ctrlpost.data.fetch.plan import ClipSpec, Plan, Unit, UnitOutput
from ctrlpost.errors import DataError
from ctrlpost.tokenizer_geometry import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION

# BGR, as OpenCV draws.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 220), "green": (60, 180, 60), "blue": (220, 90, 30),
    "yellow": (40, 220, 230), "white": (245, 245, 245), "purple": (170, 50, 150),
    "orange": (30, 140, 250),
}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("striped", "checkered", "dotted")
"""The default backgrounds; ``"plain"`` (a smooth gradient) is also available."""
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1),
                                          "down": (0, 1)}
PAN_STEP = 2
"""Pixels the camera moves per frame."""
SHAPE_SPEED = SPATIAL_COMPRESSION / 2 / TEMPORAL_COMPRESSION
"""Pixels the shape moves per frame: half a latent cell over the frames the tokenizer averages
into one latent frame (0.5 for the 8x8x8 tokenizers)."""


@dataclass(frozen=True)
class Scene:
    """Everything random about one clip; the caption is written from it."""

    shape: str
    colour: str
    motion: str
    texture: str
    background: str
    pan: str | None
    place: tuple[float, float] = (0.5, 0.5)
    """Where the shape's path starts, as fractions of the room the frame leaves it (x, y):
    (0, 0) is the top-left-most start that keeps the whole path inside the frame."""

    def caption(self) -> str:
        camera = f"the camera pans {self.pan}" if self.pan else "the camera is still"
        return (f"a {self.colour} {self.shape} moves {self.motion} over a {self.background} "
                f"{self.texture} background while {camera}")


def draw_scene(seed: int, index: int, textures: Sequence[str] = TEXTURES) -> Scene:
    """The scene of clip ``index`` for ``seed``, its background drawn from ``textures``."""
    rng = np.random.default_rng([seed, index])
    colour, background = rng.choice(sorted(COLOURS), size=2, replace=False)
    pans = [*sorted(DIRECTIONS), None]
    shape, motion = str(rng.choice(SHAPES)), str(rng.choice(sorted(DIRECTIONS)))
    texture = str(rng.choice(list(textures)))
    pan = pans[int(rng.integers(len(pans)))]
    # Drawn after the rest, so the fields above are what they were before shapes had a place.
    place_x, place_y = (float(v) for v in rng.random(2))
    return Scene(shape=shape, colour=str(colour), motion=motion, texture=texture,
                 background=str(background), pan=pan, place=(place_x, place_y))


def plan(*, num_clips: int, width: int, height: int, frames: int, fps: float, seed: int,
         num_frames: int, textures: Sequence[str] = TEXTURES) -> Plan:
    """One unit per clip ``synthetic_00000`` ...; fails up front if clips would be too short."""
    if frames < num_frames:
        raise DataError(f"[data.synthetic].frames ({frames}) is below [data].num_frames "
                        f"({num_frames}): every clip would be too short",
                        hint=f"--set data.synthetic.frames={num_frames}")
    units = []
    for index in range(num_clips):
        scene = draw_scene(seed, index, textures)
        clip_id = f"synthetic_{index:05d}"
        record = {"generator": "ctrlpost.synthetic", "seed": seed, "index": index,
                  "width": width, "height": height, "frames": frames, "fps": fps,
                  "scene": asdict(scene)}
        clip = ClipSpec(id=clip_id, caption=scene.caption(),
                        source=f"synthetic:seed={seed}:index={index}", record=record)
        produce = functools.partial(_produce, scene=scene, seed=seed, index=index, width=width,
                                    height=height, frames=frames, fps=fps)
        units.append(Unit(name=clip_id, clips=(clip,), produce=produce))
    return Plan(units=tuple(units))


def render(scene: Scene, rng: np.random.Generator, *, width: int, height: int,
           frames: int) -> Iterator[np.ndarray]:
    """The frames (BGR uint8, H x W x 3) of ``scene``, one at a time (a 720p clip is 360 MB)."""
    import cv2

    margin = PAN_STEP * frames
    canvas = _texture(scene, rng, width + 2 * margin, height + 2 * margin)
    size = shape_size(width, height)
    pan = DIRECTIONS.get(scene.pan or "", (0, 0))
    motion = np.array(DIRECTIONS[scene.motion])
    start = path_start(scene, width=width, height=height, frames=frames)
    for t in range(frames):
        x0, y0 = margin + pan[0] * PAN_STEP * t, margin + pan[1] * PAN_STEP * t
        frame = canvas[y0:y0 + height, x0:x0 + width].copy()
        cx, cy = (start + motion * SHAPE_SPEED * t).round().astype(int)
        _shape(cv2, frame, scene, int(cx), int(cy), size)
        yield frame


def shape_size(width: int, height: int) -> int:
    """Half the width of the drawn shape (a circle's radius), in pixels."""
    return max(4, min(width, height) // 5)


def path_start(scene: Scene, *, width: int, height: int, frames: int) -> np.ndarray:
    """Centre (x, y) of the shape in frame 0: ``scene.place`` of the room left once the shape
    and its whole path fit inside the frame (the frame's centre where they cannot fit)."""
    size = shape_size(width, height)
    travel = np.array(DIRECTIONS[scene.motion]) * SHAPE_SPEED * max(frames - 1, 0)
    low = size + np.maximum(-travel, 0.0)  # a path to the left (up) starts that far right (down)
    high = np.array([width, height]) - 1 - size - np.maximum(travel, 0.0)
    centre = np.array([width / 2, height / 2])
    return np.where(high >= low, low + np.array(scene.place) * (high - low), centre)


def _texture(scene: Scene, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = np.array(COLOURS[scene.background], dtype=np.float32)
    period = int(rng.integers(6, 16))
    if scene.texture == "plain":  # a gentle vertical gradient: no edges of its own
        shade = np.linspace(0.55, 0.85, height, dtype=np.float32)[:, None, None]
        grain = rng.normal(0.0, 2.0, size=(height, width, 1))  # too faint for any Canny threshold
        return np.clip(base * shade + grain, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    if scene.texture == "striped":
        mask = ((xx + yy) // period) % 2 == 0
    elif scene.texture == "checkered":
        mask = ((xx // period) + (yy // period)) % 2 == 0
    else:
        mask = ((xx % period) - period // 2) ** 2 + ((yy % period) - period // 2) ** 2 < (
            period // 3) ** 2
    shade = np.where(mask, 1.0, 0.45)[..., None]
    grain = rng.normal(0.0, 6.0, size=(height, width, 1))  # so the codec sees real texture
    return np.clip(base * shade + grain, 0, 255).astype(np.uint8)


def _shape(cv2: Any, frame: np.ndarray, scene: Scene, cx: int, cy: int, size: int) -> None:
    colour = COLOURS[scene.colour]
    if scene.shape == "circle":
        cv2.circle(frame, (cx, cy), size, colour, thickness=-1, lineType=cv2.LINE_AA)
    elif scene.shape == "square":
        cv2.rectangle(frame, (cx - size, cy - size), (cx + size, cy + size), colour, -1)
    else:
        points = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]])
        cv2.fillPoly(frame, [points.astype(np.int32)], colour, lineType=cv2.LINE_AA)


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float, *, width: int,
              height: int) -> None:
    """Write BGR frames of ``width`` x ``height`` with OpenCV's mp4v encoder."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ClipError(FailureKind.BAD_VIDEO, f"OpenCV cannot write mp4v to {path.name}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _produce(clips: Sequence[ClipSpec], workdir: Path, stop: threading.Event, *, scene: Scene,
             seed: int, index: int, width: int, height: int, frames: int,
             fps: float) -> UnitOutput:
    (clip,) = clips
    rng = np.random.default_rng([seed, index, 1])  # texture draws, apart from the scene's
    images = render(scene, rng, width=width, height=height, frames=frames)
    out = workdir / f"{clip.id}.mp4"
    write_mp4(out, images, fps, width=width, height=height)
    return UnitOutput(files={clip.id: out})
