"""The tiny T5 and the Triton kernels' CPU interpreter, shared by the embed tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CORPUS = [
    "a red car drives along a coastal road at sunset",
    "two people walk a dog through a snowy park",
    "close up of hands kneading bread dough on a wooden table",
    "a drone shot over a green valley with a river",
    "the camera pans across a busy city street at night",
    "a cat sleeps on a sunny windowsill",
    "waves crash against dark rocks under a cloudy sky",
    "a chef slices vegetables in a bright kitchen",
]


def build_tiny_t5(folder: Path) -> Path:
    """A random 2-layer T5 encoder (d_model 32) and a Unigram tokenizer, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[
        ("</s>", eos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=512)
    config = T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=32, pad_token_id=0, eos_token_id=eos,
                      decoder_start_token_id=0)
    import torch

    torch.manual_seed(0)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        # Outputs of RMS ~0.25 keep float16 rounding steps (1.2e-4 here) well under the 1e-3
        # tolerance of the batched-vs-single comparison.
        model.encoder.final_layer_norm.weight.fill_(0.25)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def interpreted() -> Iterator[None]:
    """The Triton kernels (packed attention, fused norm) built for Triton's CPU interpreter
    (tests/conftest.py chooses it for CPU runs), fresh for this test."""
    from ctrlpost.embed.kernels import fused_norm, packed_attention

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("the CPU kernel tests need TRITON_INTERPRET=1 from the start of the run")
    kernels = (packed_attention._kernel, fused_norm._kernel)
    for kernel in kernels:
        kernel.cache_clear()
    yield
    for kernel in kernels:
        kernel.cache_clear()


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")
