"""Which OpenCV releases give the same bytes for the calls the edge and blur hints make.

Installs each release into its own folder (``pip install --target``), then runs the probe below
in a fresh interpreter with that folder first on ``sys.path``: bilateral (five (d, sigmaColor,
sigmaSpace) settings, the presets' and the draw's extremes), Gaussian (three), INTER_AREA down /
INTER_LINEAR up (factors 2-4) and Canny (three threshold pairs), on a synthetic clip, uniform
noise and smoothed noise. Prints, per release, the calls whose bytes differ from the first
release, and writes ``bench/results/opencv-releases-<machine>.json``.

    python bench/opencv_releases.py [--releases 4.10.0.84 4.11.0.86 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RELEASES = ["4.10.0.84", "4.11.0.86", "4.12.0.88", "4.13.0.92", "4.14.0.94", "5.0.0.93",
            "5.1.0.95"]

PROBE = r'''
import hashlib, json
import cv2
import numpy as np

def digest(frames, call):
    joined = b"".join(call(np.ascontiguousarray(f)).tobytes() for f in frames)
    return hashlib.sha256(joined).hexdigest()[:16]

def synthetic(T=3, H=70, W=101):
    t, y = np.arange(T)[:, None, None], np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    r, g = 40 + x * 2 + 0 * y + 0 * t, 30 + y * 3 + 0 * x + 0 * t
    b = 60 + np.abs((x + 2 * t) % 20 - 10) * 6 + np.abs((y + t) % 16 - 8) * 3
    rgb = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    disk = (y - 32) ** 2 + (x - 68 + 3 * t) ** 2 < 13 ** 2
    rgb = np.where(disk[..., None], rgb + np.array([150, -150, 0]), rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8)

rng = np.random.default_rng(0)
clips = {
    "synthetic": synthetic(),
    "noise": rng.integers(0, 256, (3, 120, 160, 3), dtype=np.uint8),
    "smooth": cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 3),
}
clips["smooth"] = clips["smooth"][None]
result = {"cv2": cv2.__version__}
for name, frames in clips.items():
    H, W = frames.shape[1:3]
    calls = {}
    for d, sc, ss in [(15, 100, 50), (30, 150, 100), (50, 300, 150), (19, 180, 90), (49, 299, 149)]:
        calls[f"bilateral{d}"] = lambda f, d=d, sc=sc, ss=ss: cv2.bilateralFilter(f, d, sc, ss)
    for k, s in [(21, 10.5), (25, 12.75), (29, 14.4)]:
        calls[f"gaussian{k}"] = lambda f, k=k, s=s: cv2.GaussianBlur(f, (k, k), s)
    for s in (2, 3, 4):
        small = lambda f, s=s: cv2.resize(f, (W // s, H // s), interpolation=cv2.INTER_AREA)
        calls[f"area{s}"] = small
        calls[f"area_linear{s}"] = lambda f, small=small: cv2.resize(
            small(f), (W, H), interpolation=cv2.INTER_LINEAR)
    for lo, hi in [(20, 50), (100, 200), (300, 400)]:
        calls[f"canny{lo}"] = lambda f, lo=lo, hi=hi: cv2.Canny(f, lo, hi)
    result[name] = {call: digest(frames, fn) for call, fn in calls.items()}
print(json.dumps(result))
'''


def probe(release: str, root: Path) -> dict[str, object]:
    target = root / release
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
                    f"opencv-python-headless=={release}", "numpy"], check=True)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", nargs="+", default=RELEASES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {release: probe(release, Path(tmp)) for release in args.releases}
    first = results[args.releases[0]]
    report = {"machine": platform.machine(), "cpu": platform.processor(), "releases": results,
              "differs_from_first": {}}
    for release, result in results.items():
        differs = [f"{clip}.{call}" for clip in ("synthetic", "noise", "smooth")
                   for call, digest in result[clip].items() if first[clip][call] != digest]
        report["differs_from_first"][release] = differs
        print(f"{release}: {', '.join(differs) or 'same bytes as ' + args.releases[0]}")
    out = Path(__file__).parent / "results" / f"opencv-releases-{platform.machine()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
