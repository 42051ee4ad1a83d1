"""verify's data stage on per-clip hint files: each planted defect is one line naming its file,
found by the modality's plugin (a pickle that would run code is refused, never run)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ctrlpost.data.checks import check_dataset
from ctrlpost.modalities import registry

FRAMES, WIDTH, HEIGHT = 24, 128, 72


def problems_of(root: Path, modality: str) -> dict[str, str]:
    hint_file = registry.get_modality(modality).hint_file
    assert hint_file is not None
    found, _ = check_dataset(root, num_frames=17, resolution="128", text_dim=16, recipe="R.toml",
                             hint_files=[hint_file])
    return {p.path: p.message for p in found}


class Exploit:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_depth_defects(make_dataset: Callable[..., Path]) -> None:
    from ctrlpost_depth import write_depth_video

    root = make_dataset(["good", "short", "small", "missing"], frames=FRAMES, width=WIDTH,
                        height=HEIGHT)
    ramp = np.linspace(0, 1, WIDTH)[None, None, :].repeat(HEIGHT, 1)
    write_depth_video(root / "depth" / "good.mp4", ramp.repeat(FRAMES, 0))
    write_depth_video(root / "depth" / "short.mp4", ramp.repeat(FRAMES - 4, 0))
    write_depth_video(root / "depth" / "small.mp4", ramp[:, :, : WIDTH // 2].repeat(FRAMES, 0))
    found = problems_of(root, "depth")
    assert set(found) == {"depth/short.mp4", "depth/small.mp4", "depth/missing.mp4"}
    assert "20" in found["depth/short.mp4"] and str(FRAMES) in found["depth/short.mp4"]
    assert "64" in found["depth/small.mp4"] and str(WIDTH) in found["depth/small.mp4"]
    # verify names the command that makes the file (the plugin's made_by, recipe filled in)
    assert found["depth/missing.mp4"] == "missing depth file; run `ctrlpost annotate R.toml`"
    assert all("\n" not in message for message in found.values())
    hint_file = registry.get_modality("depth").hint_file
    assert hint_file is not None
    unmade, _ = check_dataset(root, num_frames=17, resolution="128", text_dim=16,
                              recipe="R.toml", hint_files=[replace(hint_file, made_by="")])
    assert {p.path: p.message for p in unmade}["depth/missing.mp4"] == (
        "missing depth file; make one per clip in the format the depth plugin's README gives")


def test_seg_defects(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    from ctrlpost_seg import write_seg_pickle

    root = make_dataset(["good", "wrong_shape", "exploit"], frames=FRAMES, width=WIDTH,
                        height=HEIGHT)
    mask = np.zeros((FRAMES, HEIGHT, WIDTH), dtype=bool)
    mask[:, 10:30, 20:60] = True
    write_seg_pickle(root / "seg" / "good.pickle", [("a square", mask)])
    write_seg_pickle(root / "seg" / "wrong_shape.pickle", [("a square", mask[:, :, :100])])
    marker = tmp_path / "pwned"
    (root / "seg" / "exploit.pickle").write_bytes(pickle.dumps([Exploit(marker)]))
    found = problems_of(root, "seg")
    assert set(found) == {"seg/wrong_shape.pickle", "seg/exploit.pickle"}
    assert "100" in found["seg/wrong_shape.pickle"]
    assert "system" in found["seg/exploit.pickle"]
    assert not marker.exists(), "the pickle's code ran"


def test_keypoint_defects(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    from ctrlpost_keypoint import write_keypoint_pickle

    root = make_dataset(["good", "gap", "exploit"], frames=FRAMES, width=WIDTH, height=HEIGHT)
    person = {"body-keypoints": np.full((133, 3), 0.5, dtype=np.float32)}
    every = {t: [person] for t in range(FRAMES)}
    write_keypoint_pickle(root / "keypoint" / "good.pickle", every)
    write_keypoint_pickle(root / "keypoint" / "gap.pickle",
                          {t: v for t, v in every.items() if t != 7})
    marker = tmp_path / "pwned"
    (root / "keypoint" / "exploit.pickle").write_bytes(pickle.dumps({0: [Exploit(marker)]}))
    found = problems_of(root, "keypoint")
    assert set(found) == {"keypoint/gap.pickle", "keypoint/exploit.pickle"}
    assert "7" in found["keypoint/gap.pickle"]
    assert not marker.exists(), "the pickle's code ran"
