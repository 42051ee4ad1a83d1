"""`build_tokenizer` loads the recipe's tokenizer, compiling its encoder when asked."""

from __future__ import annotations

import pytest
import torch

from ctrlpost import recipe as recipes
from ctrlpost.engine import build
from ctrlpost.errors import WeightsError

from .conftest import TINY, Workspace

CPU = build.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny(workspace: Workspace, *sets: str) -> recipes.Recipe:
    return recipes.load(TINY, [f"weights.dir='{workspace.root / 'weights'}'", *sets])


def test_the_encoder_runs_as_torchscript_unless_the_recipe_compiles_it(
        workspace: Workspace) -> None:
    tokenizer = build.build_tokenizer(tiny(workspace), CPU, torch.float32)
    assert isinstance(tokenizer.encoder, torch.jit.ScriptModule)
    # The tiny tokenizer is scripted (it has control flow): asking to compile it is refused
    # when the job is built, with the key to change.
    with pytest.raises(WeightsError, match=r"encoder\.jit: its graph cannot be compiled") as caught:
        build.build_tokenizer(tiny(workspace, "parallel.compile_tokenizer=true"), CPU,
                              torch.float32)
    assert "parallel.compile_tokenizer = false" in str(caught.value.hint)
