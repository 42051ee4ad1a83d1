"""The tiny flavor's locally made weights: deterministic, idempotent, loadable by every reader;
the base is the shipped pre-trained file."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.errors import WeightsError
from ctrlpost.models import DiT, get_flavor, load_base_checkpoint
from ctrlpost.weights import tiny

runner = CliRunner()
PARTS = (tiny.TINY_BASE, tiny.TINY_TOKENIZER, tiny.TINY_TEXT_ENCODER)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    assert tiny.materialize(root) == [root / part for part in PARTS]
    return root


def test_materialize_is_deterministic_and_idempotent(weights: Path, tmp_path: Path) -> None:
    base = weights / tiny.TINY_BASE
    stamp = base.stat().st_mtime_ns
    assert tiny.materialize(weights) == []  # everything present: nothing rewritten
    assert base.stat().st_mtime_ns == stamp
    again = tmp_path / "again"
    tiny.materialize(again, seed=0)
    for part in (tiny.TINY_BASE, *(f"{tiny.TINY_TEXT_ENCODER}/{f}"
                                   for f in tiny.TEXT_ENCODER_FILES)):
        assert (again / part).read_bytes() == (weights / part).read_bytes(), part
    other = tmp_path / "other"
    tiny.materialize(other, base="b.pt", tokenizer="tok", text_encoder="t5", seed=1)
    assert (other / "t5" / "model.safetensors").read_bytes() != (
        weights / tiny.TINY_TEXT_ENCODER / "model.safetensors").read_bytes()
    assert (other / "b.pt").read_bytes() == base.read_bytes()  # the shipped base, any seed
    assert not list(tmp_path.rglob(".*.tmp"))  # no temp names left behind


def test_materialize_takes_a_weights_section(weights: Path) -> None:
    from ctrlpost.recipe import WeightsSection

    section = WeightsSection(dir=str(weights), base=tiny.TINY_BASE, tokenizer=tiny.TINY_TOKENIZER,
                             text_encoder=tiny.TINY_TEXT_ENCODER)
    assert tiny.materialize(section) == []


def test_base_is_the_shipped_pretrained_file_and_loads_strictly(weights: Path) -> None:
    installed = (weights / tiny.TINY_BASE).read_bytes()
    assert installed == lzma.decompress(tiny.SHIPPED_BASE.read_bytes())
    record = json.loads(tiny.SHIPPED_BASE_RECORD.read_text())
    assert record["sha256"] == hashlib.sha256(installed).hexdigest()  # the record is of this file
    assert record["command"].startswith("python -m ctrlpost.engine.pretrain_tiny ")
    with torch.device("meta"):
        net = DiT(get_flavor("tiny").base)
    loaded = load_base_checkpoint(weights / tiny.TINY_BASE, net)
    assert sorted(loaded.logvar) == ["0.freqs", "0.phases", "1.weight"]
    # Trained, not the reference initialisation, whose last AdaLN layers are zeros.
    last_adaln = [v for k, v in loaded.net.items() if k.endswith("adaLN_modulation.2.weight")]
    assert len(last_adaln) == 4 * 3 + 1  # 3 sub-blocks per block, and the final layer
    assert all(float(tensor.float().abs().mean()) > 1e-3 for tensor in last_adaln)


def test_fetch_weights_installs_the_shipped_base(repo: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["fetch-weights", str(repo / "recipes" / "edge_tiny.toml"),
                                 "--set", f'weights.dir="{tmp_path}"'])
    assert result.exit_code == 0, result.output
    installed = tmp_path / tiny.TINY_BASE
    assert str(installed) in result.output
    assert installed.read_bytes() == lzma.decompress(tiny.SHIPPED_BASE.read_bytes())


def test_a_missing_shipped_base_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="pre-trained tiny base is missing") as caught:
        tiny.install_tiny_base(tmp_path / "base.pt", shipped=tmp_path / "gone.pt.xz")
    assert "python -m ctrlpost.engine.pretrain_tiny" in str(caught.value.hint)
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("damage", ["truncated", "other content"])
def test_a_damaged_shipped_base_is_refused_and_nothing_is_installed(tmp_path: Path,
                                                                    damage: str) -> None:
    shipped = tmp_path / "pkg" / tiny.SHIPPED_BASE.name
    shipped.parent.mkdir()
    (shipped.parent / tiny.SHIPPED_BASE_RECORD.name).write_bytes(
        tiny.SHIPPED_BASE_RECORD.read_bytes())
    packed = tiny.SHIPPED_BASE.read_bytes()
    shipped.write_bytes(packed[:len(packed) // 2] if damage == "truncated"
                        else lzma.compress(b"not the base"))
    target = tmp_path / "weights" / "base_model.pt"
    with pytest.raises(WeightsError, match=r"does not decompress to the content base_model\.json"
                       ) as caught:
        tiny.install_tiny_base(target, shipped=shipped)
    assert str(shipped) in caught.value.message and "reinstall ctrlpost" in str(caught.value.hint)
    assert not target.parent.exists()


def test_tokenizer_loads_and_round_trips(weights: Path) -> None:
    from ctrlpost.models.tokenizer import VideoTokenizer

    video = VideoTokenizer.from_files(weights / tiny.TINY_TOKENIZER, device="cpu",
                                      dtype=torch.float32, pixel_chunk_frames=17,
                                      latent_chunk_frames=3)
    latent = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(video.encode(video.decode(latent)), latent, atol=1e-5, rtol=0)


def test_text_encoder_loads_offline(weights: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    folder = weights / tiny.TINY_TEXT_ENCODER
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = T5EncoderModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tokenizer(["A red circle moves left over a blue striped background."],
                      return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    assert ids[-1] == 1 and 2 not in ids  # ends with </s>; every word is known
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 512
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (1, len(ids), 64)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4


def test_verify_passes_after_materialize(weights: Path, repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes" / "edge_tiny.toml"), "--json",
                                 "--stages", "recipe,plugins,weights",
                                 "--set", f'weights.dir="{weights}"'])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["stages"][2]["summary"]["flavor"] == "tiny"


def test_a_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / tiny.TINY_TOKENIZER).mkdir(parents=True)
    (tmp_path / tiny.TINY_TOKENIZER / "notes.txt").write_text("mine")
    with pytest.raises(WeightsError, match="not made by ctrlpost"):
        tiny.materialize(tmp_path)
    assert (tmp_path / tiny.TINY_TOKENIZER / "notes.txt").read_text() == "mine"
