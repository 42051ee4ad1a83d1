"""Pre-training the tiny base: its steps lower the denoising loss, it writes a file the engine's
strict loader reads, and the command refuses recipes it cannot pre-train for."""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ctrlpost import recipe as recipes
from ctrlpost.diffusion import EDMConfig
from ctrlpost.engine import pretrain_tiny
from ctrlpost.engine.seeding import seeded_generator
from ctrlpost.models import DiT, get_flavor, load_base_checkpoint
from ctrlpost.models.tokenizer import VideoTokenizer
from ctrlpost.weights import tiny

from .conftest import TINY


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pre-training clips with their embeddings and the encoders, as the command makes them."""
    work = tmp_path_factory.mktemp("pretrain")
    data = recipes.load(TINY).data
    assert pretrain_tiny.make_clips(work, data, data.embed, clips=2, seed=1) == [
        "synthetic_00000", "synthetic_00001"]
    return work


def training_set(work: Path) -> pretrain_tiny.TrainingSet:
    data = recipes.load(TINY).data
    tokenizer = VideoTokenizer.from_files(work / "weights" / tiny.TINY_TOKENIZER, device="cpu",
                                          dtype=torch.float32, pixel_chunk_frames=17,
                                          latent_chunk_frames=3)
    return pretrain_tiny.load_training_set(work / pretrain_tiny.CLIPS,
                                           ["synthetic_00000", "synthetic_00001"], tokenizer,
                                           num_frames=17,
                                           resolution=data.resolution, sigma_data=0.5,
                                           text_dim=64)


def test_the_training_set_holds_every_window_of_every_clip(work: Path) -> None:
    data = training_set(work)
    frames = recipes.load(TINY).data.synthetic.frames
    windows = frames - 17 + 1
    assert data.x0_N_C_T_H_W.shape == (2 * windows, 16, 3, 128 // 8, 224 // 8)
    assert data.clip_N.tolist() == [0] * windows + [1] * windows
    assert data.text_K_L_D.shape == (2, 512, 64) and data.fps == 24.0
    assert not torch.equal(data.text_K_L_D[0], data.text_K_L_D[1])  # two captions
    assert float(data.padding_mask_1_H_W.abs().sum()) == 0.0  # 224x128 fills its bucket


def test_a_few_steps_lower_the_denoising_loss(work: Path) -> None:
    data = training_set(work)
    edm = EDMConfig(text_dropout=0.2)
    model = pretrain_tiny.BaseWithLogvar(get_flavor("tiny").base, seed=0)

    def held_out_loss() -> float:  # the same windows, noise levels and noise each time
        with torch.no_grad():
            return float(pretrain_tiny.step_loss(model, data, edm, batch_size=8,
                                                 generator=seeded_generator([99], data_device)))

    data_device = data.x0_N_C_T_H_W.device
    before = held_out_loss()
    cfg = pretrain_tiny.PretrainConfig(steps=12, batch_size=2, lr=2e-3, warmup_steps=0,
                                       log_every_steps=6)
    logged: list[str] = []
    _, losses = pretrain_tiny.train(model, data, edm, cfg, log=logged.append)
    assert len(losses) == 2 and logged[-1].startswith("step 12/12  loss ")
    assert held_out_loss() < 0.8 * before


def test_the_written_base_loads_strictly_and_its_record_names_it(work: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "base_model.pt"
    argv = [str(TINY), "--out", str(out), "--work", str(work), "--clips", "2", "--steps", "2",
            "--batch-size", "1", "--log-every-steps", "1"]
    assert pretrain_tiny.main(argv) == 0
    with torch.device("meta"):
        net = DiT(get_flavor("tiny").base)
    loaded = load_base_checkpoint(out, net)  # the engine's strict reader of base_model.pt
    assert sorted(loaded.logvar) == ["0.freqs", "0.phases", "1.weight"]
    matrices = {v.dtype for v in loaded.net.values() if v.ndim >= 2}
    assert matrices == {pretrain_tiny.STORAGE_DTYPE}
    assert {v.dtype for v in loaded.logvar.values()} == {torch.float32}
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["command"] == "python -m ctrlpost.engine.pretrain_tiny " + " ".join(argv)
    assert record["config"]["steps"] == 2 and len(record["losses"]) == 2
    assert record["steps_taken"] == 2 and record["edm"] == asdict(pretrain_tiny.BASE_EDM)
    again = tmp_path / "again.pt"
    # Seeded: the same bytes; and the recipe's [diffusion] is post-training's, not the base's.
    post_training = ["--set", "diffusion.p_mean=1.0", "--set", "diffusion.condition_frames_max=0"]
    assert pretrain_tiny.main([*argv[:2], str(again), *argv[3:], *post_training]) == 0
    assert again.read_bytes() == out.read_bytes()
    # As the package ships it: lzma-compressed, the record (named without .xz) of the content.
    packed = tmp_path / "packed" / "base_model.pt.xz"
    assert pretrain_tiny.main([*argv[:2], str(packed), *argv[3:]]) == 0
    assert lzma.decompress(packed.read_bytes()) == out.read_bytes()
    assert len(packed.read_bytes()) < 0.8 * len(out.read_bytes())
    packed_record = json.loads((packed.parent / "base_model.json").read_text())
    assert packed_record["sha256"] == record["sha256"]


def test_max_seconds_stops_at_the_first_log_past_it(work: Path) -> None:
    cfg = pretrain_tiny.PretrainConfig(steps=50, batch_size=1, warmup_steps=0,
                                       log_every_steps=2, max_seconds=1e-9)
    logged: list[str] = []
    model = pretrain_tiny.BaseWithLogvar(get_flavor("tiny").base, seed=0)
    _, losses = pretrain_tiny.train(model, training_set(work), pretrain_tiny.BASE_EDM, cfg,
                                    log=logged.append)
    assert len(losses) == 1 and logged[-1] == "stopping at step 2: --max-seconds 1e-09 reached"


def test_the_shipped_base_records_how_to_remake_it() -> None:
    record = json.loads(tiny.SHIPPED_BASE_RECORD.read_text())
    content = lzma.decompress(tiny.SHIPPED_BASE.read_bytes())
    assert record["sha256"] == hashlib.sha256(content).hexdigest()
    remake = record["remake_command"].split()
    assert remake[:3] == ["python", "-m", "ctrlpost.engine.pretrain_tiny"]
    assert remake[remake.index("--steps") + 1] == str(record["steps_taken"])
    shipped = "src/ctrlpost/weights/tiny_base/" + tiny.SHIPPED_BASE.name
    assert remake[remake.index("--out") + 1] == shipped
    assert record["edm"] == asdict(pretrain_tiny.BASE_EDM)


def test_a_recipe_of_another_flavor_is_refused_in_one_line(repo: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    out = tmp_path / "base_model.pt"
    assert pretrain_tiny.main([str(repo / "recipes" / "edge_hdvila.toml"), "--out",
                               str(out)]) == 2
    first, hint = capsys.readouterr().err.splitlines()
    assert first.startswith("error: ") and "edge_hdvila.toml" in first
    assert "model.flavor='7b'" in first and hint == "hint: pass recipes/edge_tiny.toml"
    assert not out.exists()


def test_set_overrides_the_recipe_and_a_bad_value_names_its_key(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    out = tmp_path / "base_model.pt"
    assert pretrain_tiny.main([str(TINY), "--out", str(out), "--set",
                               "diffusion.p_mean='high'"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("error: ") and "diffusion.p_mean" in first
    assert not out.exists()
