"""Strict reading and writing of the released Cosmos-Transfer1 checkpoint layouts.

``base_model.pt`` holds ``base_model.net.<name>`` (the DiT) and ``base_model.logvar.*`` (the frozen
uncertainty head); ``edge_control.pt``/``vis_control.pt`` hold ``net.<name>`` (the control branch).
``<name>`` is exactly our ``state_dict()`` name. TransformerEngine ``._extra_state`` entries carry
no weights and are ignored. Anything else that does not match is an error: the reference loaded
non-strictly and a silent prefix mismatch once produced noise after post-training
(docs/reference.md#known-bugs).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ctrlpost.errors import WeightsError
from ctrlpost.files import write_atomic
from ctrlpost.models.args import Flavor
from ctrlpost.models.controlnet import ControlNet
from ctrlpost.models.dit import DiT

BASE_NET_PREFIX = "base_model.net."
BASE_LOGVAR_PREFIX = "base_model.logvar."
CONTROL_PREFIX = "net."
EXTRA_STATE_SUFFIX = "._extra_state"
LOGVAR_SHAPES: dict[str, tuple[int, ...]] = {
    "0.freqs": (128,),
    "0.phases": (128,),
    "1.weight": (1, 128),
}
_LISTED = 5  # keys named per problem kind in a one-line error
_FETCH_HINT = "run `ctrlpost fetch-weights`, or pass the path of the released file"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class KeyProblem:
    """One way a checkpoint differs from the expected layout."""

    kind: Literal["missing", "unexpected", "shape"]
    key: str
    expected: Shape | None = None
    found: Shape | None = None

    def __str__(self) -> str:
        if self.kind == "shape":
            return f"{self.key} {list(self.found or ())} (expected {list(self.expected or ())})"
        return self.key


@dataclass(frozen=True)
class BaseWeights:
    """Tensors of ``base_model.pt``: the DiT's ``state_dict`` and the logvar head's."""

    net: dict[str, Tensor]
    logvar: dict[str, Tensor]


def module_shapes(module: nn.Module) -> dict[str, Shape]:
    """``state_dict`` names and shapes of a module; free on a meta-device module."""
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def base_layout(base: nn.Module) -> dict[str, Shape]:
    """Expected keys and shapes of ``base_model.pt`` for this base DiT."""
    layout = {BASE_NET_PREFIX + k: s for k, s in module_shapes(base).items()}
    layout.update({BASE_LOGVAR_PREFIX + k: s for k, s in LOGVAR_SHAPES.items()})
    return layout


def control_layout(control: nn.Module) -> dict[str, Shape]:
    """Expected keys and shapes of a released ``*_control.pt`` for this control branch."""
    return {CONTROL_PREFIX + k: s for k, s in module_shapes(control).items()}


def released_layout(flavor: Flavor, part: Literal["base", "control"]) -> dict[str, Shape]:
    """Expected checkpoint layout of a flavor, from a model built on the meta device."""
    with torch.device("meta"):
        if part == "base":
            return base_layout(DiT(flavor.base))
        return control_layout(ControlNet(flavor.control))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Memory-map a flat ``name → tensor`` file (no tensor data is read), minus ``_extra_state``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file", hint=_FETCH_HINT)
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files written with the legacy (non-zip) serialisation cannot be memory-mapped.
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's refusal names an unsafe workaround: not ours
        raise WeightsError(
            f"{path}: cannot read checkpoint: not a torch file of plain tensors",
            hint="pass a released base_model.pt / *_control.pt or an exported iter_*_model.pt; "
            "objects other than tensors are never unpickled",
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{path}: cannot read checkpoint: {first_line}") from exc
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise WeightsError(
            f"{path}: not a flat name → tensor checkpoint",
            hint="training checkpoints ({'model': …, 'ema': …}) must be exported first",
        )
    return {k: v for k, v in raw.items() if not k.endswith(EXTRA_STATE_SUFFIX)}


def compare_keys(
    found: Mapping[str, Shape], expected: Mapping[str, Sequence[int]]
) -> list[KeyProblem]:
    """Missing, unexpected and shape-mismatched keys, each group sorted by name."""
    problems = [
        KeyProblem("missing", k, expected=tuple(expected[k]))
        for k in sorted(expected.keys() - found.keys())
    ]
    problems += [
        KeyProblem("unexpected", k, found=found[k]) for k in sorted(found.keys() - expected.keys())
    ]
    problems += [
        KeyProblem("shape", k, expected=tuple(expected[k]), found=found[k])
        for k in sorted(found.keys() & expected.keys())
        if tuple(expected[k]) != found[k]
    ]
    return problems


def check_checkpoint_keys(
    path: str | os.PathLike[str], expected: Mapping[str, Sequence[int]]
) -> list[KeyProblem]:
    """Problems of a checkpoint file against an expected layout; reads names and shapes only."""
    state = read_checkpoint(path)
    return compare_keys({k: tuple(v.shape) for k, v in state.items()}, expected)


def describe_problems(path: str | os.PathLike[str], problems: Sequence[KeyProblem]) -> str:
    """One line naming the file and the offending keys, long lists cut to a few names each."""
    parts = []
    for kind, label in (
        ("missing", "missing"),
        ("unexpected", "unexpected"),
        ("shape", "wrong shape"),
    ):
        group = [str(p) for p in problems if p.kind == kind]
        if group:
            more = f" … and {len(group) - _LISTED} more" if len(group) > _LISTED else ""
            parts.append(f"{label} {len(group)}: {', '.join(group[:_LISTED])}{more}")
    return f"{path}: checkpoint does not match the model: {'; '.join(parts)}"


def _load_strict(path: str | os.PathLike[str], expected: Mapping[str, Shape]) -> dict[str, Tensor]:
    state = read_checkpoint(path)
    problems = compare_keys({k: tuple(v.shape) for k, v in state.items()}, expected)
    if problems:
        hint = None
        if not expected.keys() & state.keys():
            hint = (
                "no key matches: is this the right file (base_model.pt vs *_control.pt) and flavor?"
            )
        raise WeightsError(describe_problems(path, problems), hint=hint)
    return state


def load_base_checkpoint(path: str | os.PathLike[str], base: nn.Module) -> BaseWeights:
    """Read ``base_model.pt`` strictly against ``base`` (meta-device is fine).

    Returns memory-mapped CPU tensors named as ``base.state_dict()`` and the logvar head's state
    (``0.freqs``, ``0.phases``, ``1.weight``).
    """
    state = _load_strict(path, base_layout(base))
    net = {
        k.removeprefix(BASE_NET_PREFIX): v
        for k, v in state.items()
        if k.startswith(BASE_NET_PREFIX)
    }
    logvar = {
        k.removeprefix(BASE_LOGVAR_PREFIX): v
        for k, v in state.items()
        if k.startswith(BASE_LOGVAR_PREFIX)
    }
    return BaseWeights(net=net, logvar=logvar)


def load_control_checkpoint(path: str | os.PathLike[str], control: nn.Module) -> dict[str, Tensor]:
    """Read a released ``*_control.pt`` (or our export) strictly against ``control``."""
    state = _load_strict(path, control_layout(control))
    return {k.removeprefix(CONTROL_PREFIX): v for k, v in state.items()}


def to_control_layout(
    state: Mapping[str, Tensor], *, dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """A control-branch ``state_dict`` (full tensors) in the released ``net.*`` layout, on CPU."""
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu", dtype=dtype if tensor.is_floating_point() else None)
        # A view would drag its whole storage into the file; keep only its own elements.
        if tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        out[CONTROL_PREFIX + name] = tensor
    return out


def export_control_state_dict(
    control: nn.Module, *, dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """The control branch's weights in the released ``net.*`` layout (loadable by the reference)."""
    return to_control_layout(control.state_dict(), dtype=dtype)


def save_checkpoint(state: Mapping[str, Tensor], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (:func:`ctrlpost.files.write_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temp: Path) -> None:
        # Through a handle: given a path, torch names the archive's records after the file, so
        # the temp name would end up in the bytes (and differ from one save to the next).
        with temp.open("wb") as handle:
            torch.save(dict(state), handle)

    return write_atomic(path, write)
