"""Recipes: TOML files validated by strict pydantic models.

``load(path, overrides, values=...)`` reads the TOML, applies ``--set a.b=value`` overrides and
typed option values to the raw dictionary (so a wrong path fails exactly like a typo in the
file), validates, and returns a frozen :class:`Recipe`. Every problem is collected and reported
at once, each naming the file and the dotted key, with a "did you mean" where a close key exists.

Only ``engine/build.py`` reads a whole recipe; every other component receives its own section.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ctrlpost.errors import RecipeError
from ctrlpost.recipe_bounds import (
    MAX_WORLD_SIZE,
    PLANNER,
    TRAINABLE,
    FolderName,
    LocalCount,
    Nodes,
    Retries,
    SamplerSteps,
    Seed,
    Steps,
    check_bounds,
)
from ctrlpost.recipe_names import BasePrecisionName, DataSourceName, FlavorName
from ctrlpost.recipe_overrides import OverrideError, apply_override, set_key
from ctrlpost.tokenizer_geometry import TEMPORAL_COMPRESSION, is_causal_frame_count, latent_frames

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class _Section(BaseModel):
    """Strict, frozen, and bounded recipe-wide: no float is inf or NaN, no integer passes int64."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if not isinstance(value, BaseModel):  # a section is checked by its own model
            check_bounds(value)
        return value


class JobSection(_Section):
    """Where the run writes: ``<output_root>/<project>/<group>/<name>``."""

    project: FolderName = Field("ctrlpost", description="Project folder of the run.")
    group: FolderName = Field("default", description="Group folder of the run.")
    name: FolderName = Field(description="Name of the run (its folder).")
    output_root: str | None = Field(
        None, description="Root of all runs; default: $OUTPUT_ROOT, else 'checkpoints'."
    )
    seed: Seed = Field(0, description="Seed of every random draw of the run.")


class WeightsSection(_Section):
    """Checkpoint files, relative to ``dir`` (the layout `fetch-weights` writes)."""

    dir: str = Field("checkpoints", description="Root folder of downloaded weights.")
    base: str = Field(
        "nvidia/Cosmos-Transfer1-7B/base_model.pt", description="Frozen base DiT checkpoint."
    )
    control: str | None = Field(
        None, description="Control-branch checkpoint to start from; unset: copy from the base."
    )
    tokenizer: str = Field(
        "nvidia/Cosmos-Tokenize1-CV8x8x8-720p",
        description="Folder with encoder.jit, decoder.jit and mean_std.pt.",
    )
    text_encoder: str = Field(
        "google-t5/t5-11b", description="T5 encoder: a folder under `dir` or a hub id."
    )


class HdvilaSource(_Section):
    """The HD-VILA-100M metadata source of `fetch-data`."""

    jsonl: str = Field(
        "datasets/hdvila/hdvila-100M.jsonl", description="HD-VILA-100M metadata file."
    )
    num_videos: int = Field(128, ge=1, description="Number of videos to take from the file.")


class LocalSource(_Section):
    """A folder of videos with a captions file (csv or jsonl)."""

    videos: str | None = Field(None, description="Folder of input videos.")
    captions: str | None = Field(None, description="Captions file: csv or jsonl.")


Texture = Literal["striped", "checkered", "dotted", "plain"]
DEFAULT_TEXTURES: tuple[Texture, ...] = ("striped", "checkered", "dotted")


class SyntheticSource(_Section):
    """Procedurally generated clips (moving shapes, camera pans) with captions."""

    num_clips: int = Field(8, ge=1, description="Number of clips to generate.")
    width: int = Field(1280, ge=16, description="Frame width in pixels.")
    height: int = Field(720, ge=16, description="Frame height in pixels.")
    frames: int = Field(130, ge=1, description="Frames per clip.")
    fps: float = Field(24.0, gt=0, description="Frames per second.")
    textures: list[Texture] = Field(
        default_factory=lambda: list(DEFAULT_TEXTURES), min_length=1,
        description="Backgrounds drawn from per clip; 'plain' is a smooth gradient whose only "
        "edges are the moving shape's (sparse edge hints).")


class FetchOptions(_Section):
    """How `fetch-data` downloads."""

    workers: LocalCount = Field(4, ge=1, description="Parallel downloads.")
    retries: Retries = Field(3, ge=0, description="Retries per clip, with exponential backoff.")
    min_height: int = Field(704, ge=1, description="Lowest accepted video stream height (px).")


class EmbedOptions(_Section):
    """How `embed` runs the T5 encoder."""

    # At most 65,535: the packed attention kernel's launch grid has a row per caption.
    batch_size: int = Field(512, ge=1, le=65535, description="Most captions per encoder call.")
    batch_tokens: int = Field(
        8192, ge=1, description="Most tokens per encoder call: the tokens it holds when "
        "captions are packed (GPU), captions × the longest when padded (CPU); a longer caption "
        "is encoded alone."
    )
    max_length: int = Field(512, ge=1, description="Tokens per caption (truncation).")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp16", "bf16"] = Field(
        "fp16", description="Matrix-product dtype on GPU (CPU: float32). fp16 keeps the "
        "embeddings within float16 tolerance of the float32 encoder; bf16 cannot overflow."
    )


class DataSection(_Section):
    """The dataset folder (videos/, metas/, t5_xxl/) and how it is made and read."""

    root: str = Field("datasets/hdvila", description="Dataset folder.")
    source: DataSourceName = Field(
        "hdvila", description="Where `fetch-data` gets clips: a registered data source."
    )
    num_frames: int = Field(121, ge=1, description="Consecutive frames per training sample.")
    resolution: Literal["720", "480", "256", "128"] = Field(
        "720", description="Aspect-bucket size family; '720' is 1280x704 for 16:9."
    )
    num_workers: LocalCount = Field(8, ge=0, description="Data-loader worker processes per rank.")
    prefetch_factor: int = Field(2, ge=1, description="Batches prefetched per worker.")
    max_bad_samples: int = Field(
        100, ge=0, description="Unreadable samples skipped before the run stops."
    )
    hdvila: HdvilaSource = Field(default_factory=HdvilaSource)
    local: LocalSource = Field(default_factory=LocalSource)
    synthetic: SyntheticSource = Field(default_factory=SyntheticSource)
    fetch: FetchOptions = Field(default_factory=FetchOptions)
    embed: EmbedOptions = Field(default_factory=EmbedOptions)


class ControlSection(_Section):
    """One control input: a modality plugin and its parameters."""

    modality: str = Field(min_length=1, description="Installed modality name, e.g. 'edge'.")
    weight: float = Field(1.0, ge=0, description="Scale of the control residuals.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Validated by the modality plugin's own model."
    )


class ModelSection(_Section):
    """The network: a named architecture flavor plus post-training choices."""

    flavor: FlavorName = Field("7b", description="Architecture flavor: a registered one's name.")
    num_control_blocks: int = Field(3, ge=1, description="Control-branch blocks ('block3').")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="Compute dtype.")
    base_precision: BasePrecisionName = Field(
        "bf16", description="How the frozen base computes (a registered name): bf16 as released; "
        "fp8: its token-wise linears as e4m3 products; fp8-attention (experimental): and its "
        "self-attention in e4m3, cuDNN's kernel (ctrlpost[fp8], Hopper). FP8 needs bf16 compute.")

    @model_validator(mode="after")
    def _base_precision_needs_bf16(self) -> ModelSection:
        from ctrlpost.modalities.registry import get_base_precision

        if get_base_precision(self.base_precision).needs_bf16 and self.precision != "bf16":
            raise ValueError(f'base_precision = "{self.base_precision}" needs precision = "bf16"')
        return self


class DiffusionSection(_Section):
    """The EDM training objective."""

    sigma_data: float = Field(0.5, gt=0, description="Data standard deviation.")
    p_mean: float = Field(0.0, description="Mean of ln(sigma) at training.")
    p_std: float = Field(1.0, gt=0, description="Std of ln(sigma) at training.")
    adjust_video_noise: bool = Field(True, description="Scale sigma by sqrt(latent frames).")
    sigma_min: float = Field(0.0002, gt=0, description="Smallest sigma when sampling.")
    sigma_max: float = Field(80.0, gt=0, description="Largest sigma when sampling.")
    condition_frames_min: int = Field(0, ge=0, description="Fewest conditioning latent frames.")
    condition_frames_max: int = Field(2, ge=0, description="Most conditioning latent frames.")
    augment_sigma_p_mean: float = Field(-3.0, description="Mean of ln(sigma_aug).")
    augment_sigma_p_std: float = Field(2.0, gt=0, description="Std of ln(sigma_aug).")
    text_dropout: float = Field(0.2, ge=0, le=1, description="Per-sample T5 dropout rate.")
    loss_add_logvar: bool = Field(True, description="Kendall uncertainty weighting.")

    @model_validator(mode="after")
    def _ordered(self) -> DiffusionSection:
        if self.condition_frames_min > self.condition_frames_max:
            raise ValueError("condition_frames_min must not exceed condition_frames_max")
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self


class OptimSection(_Section):
    """AdamW with linear warm-up, then a constant learning rate."""

    lr: float = Field(2**-14.3, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay.")
    eps: float = Field(1e-10, gt=0, description="Adam epsilon.")
    warmup_steps: Steps = Field(2500, ge=0, description="Linear warm-up length.")
    warmup_start_factor: float = Field(1e-6, gt=0, le=1, description="LR factor at step 0.")
    grad_clip_norm: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    fused: bool = Field(True, description="Use the fused AdamW kernel where available.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("betas must each be in [0, 1)")
        return betas


class TrainSection(_Section):
    """Length and batch of the run, EMA and failure limits."""

    steps: Steps = Field(ge=1, description="Optimizer steps of the run.")
    batch_size: int = Field(1, ge=1, description="Clips per GPU per micro-step.")
    grad_accum_steps: Steps = Field(1, ge=1, description="Micro-steps per optimizer step.")
    ema_s: float = Field(0.1, gt=0, lt=0.28, description="Power-EMA relative std s.")
    max_nonfinite_steps: Steps = Field(
        10, ge=0, description="Steps skipped for NaN/Inf before the run stops."
    )


class ParallelSection(_Section):
    """How the run is spread over processes and how memory is traded for compute."""

    nnodes: Nodes = Field(1, ge=1, description="Nodes of the job.")
    nproc_per_node: LocalCount = Field(8, ge=1, description="Processes (GPUs) per node.")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="Process group.")
    activation_checkpointing: Literal["none", "selective", "full", "auto"] = Field(
        "selective", description="Activation recomputation: 'none', 'selective' (keep each "
        "block's self-attention outputs), 'full' (keep only block inputs), or 'auto' (selective "
        "on as many blocks as the GPU's memory holds, full on the rest; same numbers).")
    compile: bool = Field(False, description="torch.compile each transformer block.")
    compile_tokenizer: bool = Field(False, description="torch.compile the traced encoder.jit's "
                                    "graph (cheaper encodes, not bit-equal to TorchScript's).")

    @model_validator(mode="after")
    def _world_fits(self) -> ParallelSection:
        if self.nnodes * self.nproc_per_node > MAX_WORLD_SIZE:
            raise ValueError(f"nnodes × nproc_per_node = {self.nnodes * self.nproc_per_node} "
                             f"ranks; at most {MAX_WORLD_SIZE}, {PLANNER}")
        return self


class CheckpointSection(_Section):
    """When and how training state is saved and resumed."""

    every_steps: Steps = Field(1000, ge=1, description="Save interval in optimizer steps.")
    keep_last: int = Field(3, ge=1, description="Training checkpoints kept.")
    resume: str = Field("auto", description="'auto' (latest complete), 'never', or a path.")
    export_released: bool = Field(
        True, description="Also write iter_*_reg_model.pt / iter_*_ema_model.pt (net.* keys)."
    )


MISSING_TENSORBOARD = ("needs tensorboard: pip install 'ctrlpost[tensorboard]' or set "
                       "logging.tensorboard = false")
"""What ``logging.tensorboard = true`` says when the ``tensorboard`` extra is not installed
(`verify` and `train` before any rank starts; the run logger if called directly)."""


class LoggingSection(_Section):
    """What rank 0 reports."""

    every_steps: Steps = Field(1, ge=1, description="Metric logging interval.")
    jsonl: bool = Field(True, description="Write metrics.jsonl in the run folder.")
    tensorboard: bool = Field(
        False, description="Write TensorBoard event files (needs the tensorboard extra).")


class ValidationSection(_Section):
    """Sampling a few fixed clips with the EMA weights during training, scored by the
    modality's fidelity metric (does the branch follow its hint?)."""

    every_steps: Steps = Field(0, ge=0, description="Validation interval in steps; 0 = off.")
    at_start: bool = Field(
        True, description="Also validate a fresh run before its first step (the starting score)."
    )
    root: str | None = Field(
        None, description="Folder of validation clips (videos/, t5_xxl/); default: data.root."
    )
    num_clips: int = Field(4, ge=1, description="Clips validated: the first N by name.")
    num_frames: int | None = Field(
        None, ge=1, description="Frames per clip (1 + 8k, at most data.num_frames); "
        "default: data.num_frames."
    )
    resolution: Literal["720", "480", "256", "128"] | None = Field(
        None, description="Aspect-bucket family of the clips; default: data.resolution."
    )
    sampler: Literal["heun", "euler"] = Field(
        "heun", description="ODE solver: 'heun' (2nd order, 2 calls/step) or 'euler'."
    )
    steps: SamplerSteps = Field(24, ge=1, description="Noise levels of the Karras schedule.")
    guidance: float = Field(
        5.0, ge=0, description="Classifier-free guidance on the text (0 = off, halves the cost)."
    )
    condition_frames: int = Field(
        0, ge=0, description="Leading latent frames taken from the real clip instead of generated."
    )
    seed: Seed = Field(0, description="Seed of the clips' frame windows, hints and noise.")
    strip_frames: int = Field(4, ge=1, description="Frames shown in each clip's PNG strip.")

    @field_validator("num_frames")
    @classmethod
    def _causal_chunk(cls, value: int | None) -> int | None:
        if value is not None and not is_causal_frame_count(value):
            k = TEMPORAL_COMPRESSION
            lower = 1 + (value - 1) // k * k
            raise ValueError(f"must be 1 + {k}k for the {k}x causal tokenizer, e.g. {lower} or "
                             f"{lower + k}")
        return value


class Recipe(_Section):
    """A whole post-training job."""

    job: JobSection
    weights: WeightsSection = Field(default_factory=WeightsSection)
    data: DataSection = Field(default_factory=DataSection)
    control: Annotated[tuple[ControlSection, ...], TRAINABLE] = Field(min_length=1)
    model: ModelSection = Field(default_factory=ModelSection)
    diffusion: DiffusionSection = Field(default_factory=DiffusionSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)

    @model_validator(mode="after")
    def _validation_fits_data(self) -> Recipe:
        frames = self.validation.num_frames
        if frames is not None and frames > self.data.num_frames:
            raise ValueError(f"validation.num_frames ({frames}) exceeds data.num_frames "
                             f"({self.data.num_frames})")
        latent = latent_frames(frames or self.data.num_frames)
        if self.validation.condition_frames >= latent:
            raise ValueError(f"validation.condition_frames ({self.validation.condition_frames}) "
                             f"must be below the clip's {latent} latent frames")
        return self

    def run_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """``${OUTPUT_ROOT:-checkpoints}/<project>/<group>/<name>`` (the reference's layout)."""
        environ = os.environ if environ is None else environ
        root = self.job.output_root or environ.get("OUTPUT_ROOT") or "checkpoints"
        return Path(root) / self.job.project / self.job.group / self.job.name


class RecipeProblem(BaseModel):
    """One problem of a recipe: the dotted key and what is wrong."""

    model_config = ConfigDict(frozen=True)
    path: str
    message: str


class RecipeInvalid(RecipeError):
    """A recipe with one or more problems; ``problems`` lists every one."""

    def __init__(self, file: str, problems: Sequence[RecipeProblem]) -> None:
        self.file = file
        self.problems = list(problems)
        lines = [f"{file}: {p.path}: {p.message}" if p.path else f"{file}: {p.message}"
                 for p in self.problems]
        super().__init__("\n".join(lines), hint=f"run `ctrlpost verify {file}` after fixing it")


def load(path: str | Path, overrides: Sequence[str] = (), *,
         values: Mapping[str, Any] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise :class:`RecipeInvalid` listing every problem.
    ``overrides``: ``--set KEY=VALUE`` texts (TOML values); ``values``: dotted key -> Python
    value (typed command-line options), set as given, after the overrides."""
    file = str(path)
    raw = read_toml(path)
    problems: list[RecipeProblem] = []
    for key, change in [*((None, o) for o in overrides), *(values or {}).items()]:
        try:
            if key is None:
                apply_override(raw, change)
            else:
                set_key(raw, key, change)
        except OverrideError as exc:
            problems.append(RecipeProblem(path=exc.key, message=exc.reason))
        except ValueError as exc:
            problems.append(RecipeProblem(path=key or "--set", message=str(exc)))
    if problems:
        raise RecipeInvalid(file, problems)
    return validate(raw, file=file)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a one-line RecipeError that names the
    file once (``<path>:<line>:<col>: ...`` for a syntax error) and the fix."""
    p = Path(path)
    if not p.is_file():
        what = "recipe not found (this is a folder)" if p.is_dir() else "recipe not found"
        raise RecipeError(f"{p}: {what}; pass the path of a TOML recipe, e.g. "
                          "recipes/edge_tiny.toml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not a UTF-8 text file; save the recipe as UTF-8 TOML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(_toml_error_line(p, text, str(exc))) from None


# tomllib/tomli end their message with where the parser stopped; the position moves to the front.
_TOML_AT_LINE = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$", re.S)
_TOML_AT_END = re.compile(r"^(?P<what>.*) \(at end of document\)$", re.S)


def _toml_error_line(path: Path, text: str, message: str) -> str:
    """``<path>:<line>:<col>: invalid TOML: <what>`` (the form editors and terminals jump to)
    from a TOML parser's ``"<what> (at line L, column C)"`` or ``"<what> (at end of
    document)"``."""
    if found := _TOML_AT_LINE.match(message):
        where, what = f"{path}:{found['line']}:{found['col']}", found["what"]
    elif found := _TOML_AT_END.match(message):
        lines = text.split("\n")
        where, what = f"{path}:{len(lines)}:{len(lines[-1]) + 1}", found["what"]
    else:
        where, what = str(path), message
    return f"{where}: invalid TOML: {what}"


def validate(raw: Mapping[str, Any], *, file: str = "<recipe>") -> Recipe:
    """Validate a raw recipe dictionary, collecting every problem."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeInvalid(file, _problems(exc.errors())) from None


def _problems(errors: Sequence[Mapping[str, Any]]) -> list[RecipeProblem]:
    """Problems of pydantic errors, minus the echoes of a misspelt key.

    ``stpes = 10`` yields both "unknown key stpes" and "missing steps"; the first explains the
    second, so the missing-key error is dropped. A failed array item also makes pydantic report
    the array as too short; that is dropped too.
    """
    suggested = {_suggested_path(err) for err in errors} - {None}
    failed_arrays = {_dotted(tuple(err["loc"])[:1]) for err in errors if len(err["loc"]) > 1}
    return [
        _problem(err)
        for err in errors
        if not (err["type"] == "missing" and _dotted(tuple(err["loc"])) in suggested)
        and not (err["type"] == "too_short" and _dotted(tuple(err["loc"])) in failed_arrays)
    ]


def _suggested_path(err: Mapping[str, Any]) -> str | None:
    """For an unknown key close to a valid one, the dotted path of the valid one."""
    if err["type"] != "extra_forbidden":
        return None
    loc = tuple(err["loc"])
    close = _closest(str(loc[-1]), _field_names_at(loc[:-1]))
    return _dotted((*loc[:-1], close)) if close else None


def _closest(name: str, known: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _problem(err: Mapping[str, Any]) -> RecipeProblem:
    loc = tuple(err["loc"])
    # Inside a free-form table, the recipe-wide bounds rule says where below the key.
    dotted = _dotted(loc) + getattr(err.get("ctx", {}).get("error"), "where", "")
    if err["type"] == "extra_forbidden":
        known = _field_names_at(loc[:-1])
        close = _closest(str(loc[-1]), known)
        message = "unknown key" + (f"; did you mean {close!r}?" if close else "")
        if not close and known:
            message += f" (valid: {', '.join(known)})"
        return RecipeProblem(path=dotted, message=message)
    if err["type"] == "missing":
        return RecipeProblem(path=dotted, message="missing required key")
    message = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] not in {"value_error", "assertion_error"} and not isinstance(got, dict | list):
        message += f" (got {got!r})"
    return RecipeProblem(path=dotted, message=message)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_names_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model reached by following ``loc`` from :class:`Recipe`."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def dump_toml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as TOML text."""
    return _toml_tables(recipe.model_dump(mode="json"), prefix="")


def _toml_tables(data: Mapping[str, Any], prefix: str) -> str:
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars.items() if v is not None]
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        name = f"{prefix}{key}"
        if _is_table(value):
            out += f"\n[{name}]\n" + _toml_tables(value, prefix=f"{name}.")
        elif _is_table_array(value):
            for item in value:
                out += f"\n[[{name}]]\n" + _toml_tables(item, prefix=f"{name}.")
    return out


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
