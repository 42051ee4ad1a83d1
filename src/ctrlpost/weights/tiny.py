"""The tiny flavor's weights, made locally: what `ctrlpost fetch-weights` does for ``tiny``.

The CPU demo (``recipes/edge_tiny.toml``) runs the same code paths as a 7B job, so it needs the
same three artefacts, in the same formats, just small and without a download:

* ``<dir>/<base>``: the tiny-flavor base in the released ``base_model.pt`` layout
  (``base_model.net.*`` + ``base_model.logvar.*``), decompressed from the file shipped in this
  package (:data:`SHIPPED_BASE`, lzma) and checked against its record's sha256: a base
  pre-trained on the synthetic source's plain-background clips, so that it draws clean frames
  and a control branch has something to steer. The command that remakes it
  (:mod:`ctrlpost.engine.pretrain_tiny`) is in :data:`SHIPPED_BASE_RECORD`;
* ``<dir>/<tokenizer>/``: the tiny TorchScript video tokenizer (``encoder.jit``, ``decoder.jit``,
  ``mean_std.pt``), see :mod:`ctrlpost.models.tiny_tokenizer`;
* ``<dir>/<text_encoder>/``: a 2-layer T5 encoder with a tokenizer trained here on a few
  caption-like sentences, loadable offline with ``AutoTokenizer``/``T5EncoderModel``.

The tokenizer and T5 are functions of ``seed`` (byte-identical across runs); the base is the
shipped file's content, byte for byte. Everything is written under a temporary name and
renamed, so an artefact that exists is complete and is kept. torch and transformers are
imported inside the functions: ``ctrlpost.weights`` stays import-light.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlpost.errors import WeightsError
from ctrlpost.files import commit_folder, temp_path, write_bytes_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from ctrlpost.recipe import WeightsSection

TINY_BASE = "ctrlpost/tiny-dit/base_model.pt"
TINY_TOKENIZER = "ctrlpost/tiny-tokenizer"
TINY_TEXT_ENCODER = "ctrlpost/tiny-t5"
TOKENIZER_FILES = ("encoder.jit", "decoder.jit", "mean_std.pt")
TEXT_ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json",
                      "tokenizer_config.json")

SHIPPED_BASE = Path(__file__).with_name("tiny_base") / "base_model.pt.xz"
"""The pre-trained tiny base installed as ``<dir>/<base>`` (package data, lzma-compressed: the
``base_model.pt`` bytes would be 2.6 MB)."""
SHIPPED_BASE_RECORD = SHIPPED_BASE.with_name("base_model.json")
"""How :data:`SHIPPED_BASE` was made: the command, its settings, the sha256 of its content."""
T5_OUTPUT_SCALE = 0.25
"""Final layer-norm weight of the tiny T5: embeddings of RMS ~0.25, near the real encoder's
scale, so their float16 storage rounds them by ~1e-4, not ~1e-3."""
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5
T5_VOCAB_SIZE = 400  # an upper bound: the trainer stops earlier on a corpus this small
_ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-&/")
_SUFFIXES = ("##s", "##es", "##ed", "##ing", "##ly", "##er", "##est")

CORPUS = (
    "a red circle moves left over a blue striped background while the camera is still",
    "a green square moves right over a white checkered background while the camera pans up",
    "a yellow triangle moves up over a purple dotted background while the camera pans left",
    "an orange circle moves down over a green striped background while the camera pans right",
    "a white square moves left over a red dotted background while the camera pans down",
    "a purple triangle moves right over an orange checkered background",
    "a blue circle drifts slowly across a yellow striped background",
    "a red car drives along a coastal road at sunset",
    "two people walk a dog through a snowy park in the morning",
    "close up of hands kneading bread dough on a wooden table",
    "a drone shot flies over a green valley with a winding river",
    "the camera pans across a busy city street at night with bright lights",
    "a cat sleeps on a sunny windowsill next to a plant",
    "waves crash against dark rocks under a cloudy grey sky",
    "a chef slices fresh vegetables in a bright modern kitchen",
    "a cyclist rides down a mountain trail between tall pine trees",
    "children play football on a grass field after school",
    "a train crosses a long bridge over a wide river",
    "rain falls on a quiet street while cars pass slowly",
    "a woman reads a book in a cafe by the window",
    "a man repairs a bicycle wheel in a small workshop",
    "time lapse of clouds moving over a desert landscape",
    "a boat sails on a calm blue lake surrounded by hills",
    "a robot arm picks up a box from a conveyor belt in a factory",
    "the sun rises behind snowy mountain peaks",
    "a crowd watches fireworks explode in the night sky",
    "a dog runs along the beach and chases a ball",
    "steam rises from a cup of coffee on a kitchen counter",
    "an old man feeds pigeons in a city square",
    "a truck drives through a forest on a dirt road",
    "leaves fall from a tree in a park in autumn",
    "a person types on a laptop at a desk in an office",
    "a camera follows a runner on a track in a stadium",
    "traffic moves on a highway seen from above",
    "a horse gallops across an open field at dusk",
    "the camera zooms in on a flower swaying in the wind",
)


def materialize(
    weights_dir: str | os.PathLike[str] | WeightsSection,
    *,
    base: str = TINY_BASE,
    tokenizer: str = TINY_TOKENIZER,
    text_encoder: str = TINY_TEXT_ENCODER,
    seed: int = 0,
) -> list[Path]:
    """Install the tiny base, and write the video tokenizer and T5, under ``weights_dir``.

    ``base``, ``tokenizer`` and ``text_encoder`` are paths relative to ``weights_dir``, as in
    ``[weights]`` of a recipe; ``weights_dir`` may also be that section itself (its ``dir``,
    ``base``, ``tokenizer`` and ``text_encoder`` are then used). Artefacts already present and
    complete are kept. Returns the paths written by this call (empty when all were present).
    """
    if not isinstance(weights_dir, str | os.PathLike):
        section = weights_dir
        weights_dir, base = section.dir, section.base
        tokenizer, text_encoder = section.tokenizer, section.text_encoder
    root = Path(weights_dir)
    written: list[Path] = []
    if not (root / base).is_file():
        written.append(install_tiny_base(root / base))
    written += make_encoders(root, tokenizer=tokenizer, text_encoder=text_encoder, seed=seed)
    return written


def make_encoders(root: Path, *, tokenizer: str = TINY_TOKENIZER,
                  text_encoder: str = TINY_TEXT_ENCODER, seed: int = 0) -> list[Path]:
    """Write the video tokenizer and the T5 under ``root`` (what the base needs no part of:
    :mod:`ctrlpost.engine.pretrain_tiny` makes them to pre-train it); returns the folders
    written (none when both were complete)."""
    written: list[Path] = []
    if _make_folder(root / tokenizer, TOKENIZER_FILES, _write_tokenizer, seed):
        written.append(root / tokenizer)
    if _make_folder(root / text_encoder, TEXT_ENCODER_FILES, write_tiny_t5, seed):
        written.append(root / text_encoder)
    return written


def install_tiny_base(path: Path, *, shipped: Path = SHIPPED_BASE) -> Path:
    """Decompress the shipped pre-trained base (``shipped``, lzma) to ``path`` atomically, after
    checking its content against the sha256 of the record beside it (``base_model.json``)."""
    remake = ("reinstall ctrlpost, or make it: python -m ctrlpost.engine.pretrain_tiny "
              f"recipes/edge_tiny.toml --out {shipped}")
    record = shipped.with_name(SHIPPED_BASE_RECORD.name)
    try:
        packed = shipped.read_bytes()
        expected = json.loads(record.read_text())["sha256"]
    except FileNotFoundError as exc:
        raise WeightsError(f"{exc.filename}: the pre-trained tiny base is missing from this "
                           "installation", hint=remake) from None
    try:
        data = lzma.decompress(packed)
    except lzma.LZMAError:
        data = b""
    if hashlib.sha256(data).hexdigest() != expected:
        raise WeightsError(f"{shipped}: the pre-trained tiny base does not decompress to the "
                           f"content {record.name} records (sha256 {expected[:12]}…)", hint=remake)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, data)


def _make_folder(
    target: Path, required: tuple[str, ...], write: Callable[[Path, int], object], seed: int
) -> bool:
    """Fill ``target`` with ``write`` through a temp folder and a rename; False if complete."""
    missing = [name for name in required if not (target / name).is_file()]
    if not missing:
        return False
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WeightsError(
            f"{target} exists but lacks {', '.join(missing)}: it was not made by ctrlpost",
            hint=f"delete {target} and run `ctrlpost fetch-weights` again",
        )
    temp = temp_path(target)
    temp.mkdir(parents=True)
    try:
        write(temp, seed)
        try:
            commit_folder(temp, target)  # replaces an empty folder; fails on a full one
        except OSError:
            if any(not (target / name).is_file() for name in required):
                raise
            return False  # another process finished the same folder first
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return True


def _write_tokenizer(folder: Path, seed: int) -> None:
    # The "Haar cells" codec has no parameters: nothing depends on the seed.
    from ctrlpost.models.tiny_tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(folder)


def caption_vocabulary() -> dict[str, int]:
    """WordPiece vocabulary of :data:`CORPUS`: T5's special tokens (pad 0, eos 1, unk 2), every
    character of :data:`_ALPHABET` alone and as ``##`` continuation, a few English suffixes,
    then the corpus's words by decreasing count (ties alphabetical).

    Counted here rather than by ``tokenizers``' trainers: those return a different vocabulary
    in each process (their hash maps are randomly seeded), and the tiny T5's embedding rows
    must mean the same tokens for a given seed.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer = _caption_normalizer(normalizers)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for line in CORPUS
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line))
    )
    pieces = [*T5_SPECIAL_TOKENS, *_ALPHABET, *(f"##{c}" for c in _ALPHABET), *_SUFFIXES]
    pieces += [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))]
    return {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}


def _caption_normalizer(normalizers: Any) -> Any:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def caption_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-like tokenizer for captions (pad 0, eos 1, unk 2; appends ``</s>``), wrapped as
    ``PreTrainedTokenizerFast`` with ``model_max_length`` 512.

    Lower-cased WordPiece over :func:`caption_vocabulary`: corpus words are one token each and
    any other English word splits into known pieces, down to single letters, not ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(caption_vocabulary(), unk_token="<unk>"))
    tok.normalizer = _caption_normalizer(normalizers)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def write_tiny_t5(folder: Path, seed: int = 0) -> Path:
    """Save :func:`caption_tokenizer` and a random 2-layer T5 encoder (``d_model`` = the tiny
    flavor's text width) to ``folder`` with ``save_pretrained``."""
    import torch
    from transformers import T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    from ctrlpost.models.args import get_flavor

    tokenizer = caption_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=get_flavor("tiny").base.text_dim,
                      d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0,
                      pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
    with torch.no_grad():
        model.encoder.final_layer_norm.weight.fill_(T5_OUTPUT_SCALE)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in fetch-weights' output
    try:
        model.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _portable_tokenizer_config(folder / "tokenizer_config.json")
    return folder


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 records ``tokenizer_class: TokenizersBackend``, a name 4.x does not know;
    ``PreTrainedTokenizerFast`` loads the same ``tokenizer.json`` on both."""
    import json

    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
