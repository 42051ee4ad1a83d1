"""Random stand-ins for GroundingDINO and SAM2 (``Annotator.make_tiny``), for the tiny flavor.

`fetch-weights` calls :func:`make_tiny` instead of downloading the two repos for a recipe of
the tiny flavor, so `ctrlpost annotate` runs the real loading and inference code (the same
transformers classes, ``save_pretrained`` files and processors as the released repos) on the
embedded default with no download:

* GroundingDINO: a tiny Swin backbone and a 1-layer BERT text encoder, with a WordPiece
  tokenizer made here whose special and period ids are BERT's (GroundingDINO's phrase masking
  looks for ids 101, 102, 1012 and 1029); detection slots :data:`QUERIES` (900 released);
* SAM2's video model: a tiny Hiera, input frames of :data:`SIZE` pixels (1024 released).

Random weights find arbitrary boxes (or none); the files are pure functions of ``seed``.
torch, transformers and tokenizers are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

DETECTOR_REPO = "IDEA-Research/grounding-dino-tiny"
TRACKER_REPO = "facebook/sam2-hiera-large"
SIZE = 64
"""SAM2's input frame side in the stand-in."""
QUERIES = 6
"""GroundingDINO's detection slots in the stand-in."""
WORDS = ("person", "car", "tree", "traffic", "light", "dog", "shape", "ball", "box")
"""Words the stand-in tokenizer knows (others become ``[UNK]``)."""
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103,
            ".": 1012, "?": 1029}


def bert_vocab(words: Sequence[str] = WORDS) -> dict[str, int]:
    """BERT's special and delimiter ids, ``words`` from 2000, ``[unusedN]`` between."""
    vocab = dict(BERT_IDS)
    for index, word in enumerate(words):
        vocab[word] = 2000 + index
    taken = set(vocab.values())
    for index in range(max(taken) + 1):
        if index not in taken:
            vocab[f"[unused{index}]"] = index
    return vocab


def build_tokenizer(words: Sequence[str] = WORDS) -> Any:
    """A BERT-like uncased WordPiece tokenizer of ``words``, made locally with the tokenizers
    library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordPiece(bert_vocab(words), unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def save_tiny_grounding_dino(folder: Path, *, seed: int = 0) -> None:
    """GroundingDINO of tiny widths with its processor, as the released repo is saved."""
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    backbone = SwinConfig(image_size=SIZE, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=2,
                          out_features=["stage2", "stage3", "stage4"])  # type: ignore[call-arg]
    text = BertConfig(vocab_size=len(bert_vocab()), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=QUERIES, d_model=32,
        encoder_layers=1, decoder_layers=2,  # decoder box heads are tied: 2 layers at least
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_n_points=1, decoder_n_points=1, max_text_len=64)
    with torch.random.fork_rng(devices=[]):  # the caller's generator stays as it was
        torch.manual_seed(seed)
        GroundingDinoForObjectDetection(config).save_pretrained(folder)
    images = GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 128})
    GroundingDinoProcessor(image_processor=images, tokenizer=build_tokenizer()).save_pretrained(
        folder)


def save_tiny_sam2_video(folder: Path, *, seed: int = 0) -> None:
    """SAM2's video model of tiny widths with its video processor's settings."""
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.configuration_sam2_video import (
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    hiera = Sam2HieraDetConfig(
        hidden_size=8, image_size=[SIZE, SIZE], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2])
    # SAM2's memory is 64 channels wide (its cross-attention reads 64) and each object pointer
    # is split into 64-channel tokens: the model width D must be a larger multiple of 64 (equal
    # widths leave the pointers unsplit, which transformers' code does not expect).
    D = 128
    vision = Sam2VisionConfig(
        backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=D,
        backbone_feature_sizes=[[SIZE // 4] * 2, [SIZE // 8] * 2, [SIZE // 16] * 2])
    config = Sam2VideoConfig(
        vision_config=vision, image_size=SIZE, num_maskmem=3,
        # config objects, not dicts: transformers 5.17 builds a dict mask_decoder_config as a
        # prompt-encoder config
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(
            hidden_size=D, image_size=SIZE, patch_size=16, mask_input_channels=4),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(
            hidden_size=D, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
        memory_attention_hidden_size=D, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[SIZE // 16, SIZE // 16],
        memory_encoder_hidden_size=D, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=D, memory_fuser_embed_dim=D,
        memory_fuser_intermediate_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Sam2VideoModel(config).save_pretrained(folder)
    Sam2VideoVideoProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)


def make_tiny(repo: str, folder: Path, *, seed: int = 0) -> None:
    """Save the random stand-in of ``repo`` (one of the two seg models) in ``folder``."""
    makers = {DETECTOR_REPO: save_tiny_grounding_dino, TRACKER_REPO: save_tiny_sam2_video}
    if repo not in makers:
        raise ValueError(f"the seg plugin makes no stand-in for {repo!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers[repo](folder, seed=seed)
