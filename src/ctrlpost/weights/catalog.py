"""What `fetch-weights` can download: hub repos, files, approximate sizes, known checksums.

Pure data plus small lookups; no torch and no huggingface_hub, so the CLI stays fast to import.

Sources (docs/reference.md): #released-checkpoints and #weights-layout for the released files,
#tokenizer for the tokenizer files, #t5-embeddings for the T5 encoder, #downloader for the repos
the reference's downloader mirrors and its MD5 table. Sizes are estimates from parameter counts
(base ≈ 7.24 B params ≈ 14.5 GB in bf16, a control branch ≈ 0.89 B params ≈ 1.8 GB) and are only
shown when the hub cannot be asked; the hub's own metadata always wins. The MD5s are the
reference's: the hub's sha256 / git oid is the authoritative check, an MD5 that disagrees with a
hub-verified file means the hub's copy changed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ctrlpost.errors import WeightsError

KB = 10**3
MB = 10**6
GB = 10**9

TRANSFER_7B = "nvidia/Cosmos-Transfer1-7B"
TRANSFER_7B_AV = "nvidia/Cosmos-Transfer1-7B-Sample-AV"
TRANSFER_7B_AV_MULTIVIEW = "nvidia/Cosmos-Transfer1-7B-Sample-AV-Single2MultiView"
TOKENIZER_720P = "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"
UPSAMPLER = "nvidia/Cosmos-UpsamplePrompt1-12B-Transfer"
GUARDRAIL = "nvidia/Cosmos-Guardrail1"
T5_11B = "google-t5/t5-11b"
DEPTH_ANYTHING_V2_SMALL = "depth-anything/Depth-Anything-V2-Small-hf"

#: Where a gated repo's license is accepted (mirrors set with HF_ENDPOINT proxy huggingface.co).
LICENSE_URL = "https://huggingface.co/{repo_id}"


@dataclass(frozen=True)
class KnownFile:
    """One released file: its repo and path there, about how big it is, the reference's MD5.

    ``optional`` files are fetched only when the hub lists them (e.g. tokenizer side files that
    some repos have and others do not).
    """

    repo_id: str
    path: str
    approx_bytes: int | None
    md5: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class RepoPatterns:
    """A repo, or the part of it matching ``patterns`` (fnmatch, as ``snapshot_download``'s
    ``allow_patterns``), expanded against the hub's file list."""

    repo_id: str
    patterns: tuple[str, ...] = ("*",)
    purpose: str = ""
    gated: bool = False


def _transfer(path: str, approx: int | None, md5: str | None = None) -> KnownFile:
    return KnownFile(TRANSFER_7B, path, approx, md5)


BASE = _transfer("base_model.pt", 14_500 * MB, "356497b415f3b0697f8bb034d22b6807")

#: Released control branches of Cosmos-Transfer1-7B, by file name. Which modality trains which
#: file is its plugin's to say (``Modality.released_control_file``): ``blur`` names
#: ``vis_control.pt``, the reference's "vis" control (blur + down-up hint).
CONTROL_FILES: dict[str, KnownFile] = {f.path: f for f in (
    _transfer("edge_control.pt", 1_800 * MB, "a0642e300e9e184077d875e1b5920a61"),
    _transfer("vis_control.pt", 1_800 * MB, "69fdffc5006bc5d6acb29449bb3ffdca"),
    _transfer("depth_control.pt", 1_800 * MB),
    _transfer("seg_control.pt", 1_800 * MB),
    _transfer("keypoint_control.pt", 1_800 * MB),
)}
CONTROL_SUFFIX = "_control.pt"

#: The video tokenizer files training reads (docs/reference.md#tokenizer); decoder.jit is used
#: only to draw samples.
TOKENIZER_FILES: tuple[str, ...] = ("encoder.jit", "decoder.jit", "mean_std.pt")

_TOKENIZER_KNOWN: tuple[KnownFile, ...] = (
    KnownFile(TOKENIZER_720P, "encoder.jit", 200 * MB, "f5834d03645c379bc0f8ad14b9bc0299"),
    KnownFile(TOKENIZER_720P, "decoder.jit", 300 * MB, "ff21a63ed817ffdbe4b6841111ec79a8"),
    KnownFile(TOKENIZER_720P, "mean_std.pt", 10 * KB),
    KnownFile(TOKENIZER_720P, "autoencoder.jit", 500 * MB, "7f658580d5cf617ee1a1da85b1f51f0d"),
)

#: What ``T5EncoderModel.from_pretrained`` and ``T5TokenizerFast`` need from google-t5/t5-11b.
#: One weight format only: ``pytorch_model.bin`` (the file the reference checksums); the repo's
#: TF/Flax/Rust copies would add ~130 GB that nothing here loads.
T5_FILES: tuple[KnownFile, ...] = (
    KnownFile(T5_11B, "config.json", 2 * KB),
    KnownFile(T5_11B, "pytorch_model.bin", 45_200 * MB, "f890878d8a162e0045a25196e27089a3"),
    KnownFile(T5_11B, "spiece.model", 792 * KB),
    KnownFile(T5_11B, "tokenizer.json", 1_390 * KB),
    KnownFile(T5_11B, "tokenizer_config.json", 3 * KB, optional=True),
    KnownFile(T5_11B, "special_tokens_map.json", 3 * KB, optional=True),
)

#: Repos of the models `ctrlpost annotate` runs (a modality's ``Annotator.models``) whose files
#: the catalog knows: the whole small repo, as the reference's downloader takes it (sizes from
#: the hub's listing); the side files are optional. A repo not listed here is fetched whole,
#: as the hub lists it.
ANNOTATION_MODEL_FILES: dict[str, tuple[KnownFile, ...]] = {
    DEPTH_ANYTHING_V2_SMALL: (
        KnownFile(DEPTH_ANYTHING_V2_SMALL, "config.json", 1 * KB),
        KnownFile(DEPTH_ANYTHING_V2_SMALL, "model.safetensors", 99_200 * KB),
        KnownFile(DEPTH_ANYTHING_V2_SMALL, "preprocessor_config.json", 1 * KB),
        KnownFile(DEPTH_ANYTHING_V2_SMALL, "README.md", 5 * KB, optional=True),
        KnownFile(DEPTH_ANYTHING_V2_SMALL, ".gitattributes", 2 * KB, optional=True),
    ),
}

#: For a text encoder repo not in this catalog: config, tokenizer files and safetensors weights.
TEXT_ENCODER_PATTERNS: tuple[str, ...] = (
    "config.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.safetensors",
    "*.safetensors.index.json",
)

#: Other files of the reference's layout with a size estimate or a reference checksum, so `--all`
#: can show and verify them; everything else in the mirrored repos comes from the hub's listing.
_OTHER_KNOWN: tuple[KnownFile, ...] = (
    _transfer("4kupscaler_control.pt", 1_800 * MB),
    _transfer("edge_control_distilled.pt", None, "bf7def0bb5ffb5beff1f376d2404fcb4"),
    _transfer("config.json", 2 * KB),
    KnownFile(TRANSFER_7B_AV, "base_model.pt", 14_500 * MB),
    KnownFile(TRANSFER_7B_AV, "hdmap_control.pt", 1_800 * MB),
    KnownFile(TRANSFER_7B_AV, "lidar_control.pt", 1_800 * MB),
)

#: ``--all``: every repo the reference's downloader mirrors (docs/reference.md#downloader), as
#: patterns per repo.
MIRRORS: tuple[RepoPatterns, ...] = (
    RepoPatterns(TRANSFER_7B, purpose="base and every released control branch"),
    RepoPatterns(TRANSFER_7B_AV, purpose="autonomous-vehicle sample model"),
    RepoPatterns(TRANSFER_7B_AV_MULTIVIEW, purpose="AV single-to-multi-view sample model"),
    RepoPatterns(TOKENIZER_720P, purpose="video tokenizer"),
    RepoPatterns(UPSAMPLER, purpose="prompt upsampler (inference)"),
    RepoPatterns(GUARDRAIL, purpose="guardrail models (inference)"),
    RepoPatterns("facebook/sam2-hiera-large", purpose="segmentation (pre-processing)"),
    RepoPatterns(DEPTH_ANYTHING_V2_SMALL, purpose="depth (pre-processing)"),
    RepoPatterns("IDEA-Research/grounding-dino-tiny", purpose="detection (pre-processing)"),
    RepoPatterns(T5_11B, tuple(f.path for f in T5_FILES), purpose="text encoder"),
    RepoPatterns("meta-llama/Llama-Guard-3-8B", purpose="guardrail (inference)", gated=True),
)

_ALL_KNOWN: tuple[KnownFile, ...] = (
    BASE, *CONTROL_FILES.values(), *_TOKENIZER_KNOWN, *T5_FILES, *_OTHER_KNOWN,
    *(f for files in ANNOTATION_MODEL_FILES.values() for f in files),
)
_BY_NAME: dict[tuple[str, str], KnownFile] = {(f.repo_id, f.path): f for f in _ALL_KNOWN}


def known_file(repo_id: str, path: str) -> KnownFile | None:
    """The catalog's entry for ``repo_id``/``path``, if it has one."""
    return _BY_NAME.get((repo_id, path))


def lookup(repo_id: str, path: str) -> KnownFile:
    """The catalog's entry, or a bare one (size unknown, no checksum) for others."""
    return known_file(repo_id, path) or KnownFile(repo_id, path, None)


def released_controls(repo_id: str = TRANSFER_7B) -> dict[str, KnownFile]:
    """The control branches `fetch-weights --modality` can take from ``repo_id``, by name, sorted:
    each installed modality's ``released_control_file``, then the catalogued control files of the
    repo no installed modality claims, by the release's own name (``depth_control.pt``: depth)."""
    from ctrlpost.modalities import registry

    found = {name: lookup(repo_id, modality.released_control_file)
             for name, modality in registry.installed_modalities().items()
             if modality.released_control_file}
    claimed = {f.path for f in found.values()}
    for f in CONTROL_FILES.values():
        if f.repo_id == repo_id and f.path not in claimed:
            found.setdefault(f.path.removesuffix(CONTROL_SUFFIX), f)
    return dict(sorted(found.items()))


def control_file(modality: str, repo_id: str = TRANSFER_7B) -> KnownFile:
    """The released control checkpoint of a modality in ``repo_id`` (see
    :func:`released_controls`); an unknown name lists the known ones."""
    available = released_controls(repo_id)
    found = available.get(modality)
    if found is not None:
        return found
    choices = list(available)
    close = difflib.get_close_matches(modality, choices, n=1, cutoff=0.6)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise WeightsError(
        f"no released control checkpoint for modality {modality!r}",
        hint=f"{guess}known: {', '.join(choices)}; or set [weights].control to "
        "<org>/<repo>/<file> in the recipe",
    )


def tokenizer_files(repo_id: str) -> tuple[KnownFile, ...]:
    """The tokenizer files training reads, from ``repo_id`` (the catalog's data when known)."""
    return tuple(lookup(repo_id, name) for name in TOKENIZER_FILES)


def text_encoder_files(repo_id: str) -> tuple[KnownFile, ...] | None:
    """The files of a catalogued text encoder repo; None for others (use the patterns)."""
    return T5_FILES if repo_id == T5_11B else None


def annotation_model_files(repo_id: str) -> tuple[KnownFile, ...] | None:
    """The files of a catalogued annotation model repo; None for others (fetched whole)."""
    return ANNOTATION_MODEL_FILES.get(repo_id)


def mirror_repos() -> tuple[RepoPatterns, ...]:
    """Every repo ``--all`` mirrors, with its patterns."""
    return MIRRORS


def known_in(repo_id: str) -> tuple[KnownFile, ...]:
    """Catalogued files of one repo (used to show `--all` offline)."""
    return tuple(f for f in _ALL_KNOWN if f.repo_id == repo_id)
