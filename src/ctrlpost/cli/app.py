"""The ``ctrlpost`` command line: one thin function per command.

Heavy modules (torch, transformers, cv2, pydantic models) are imported inside the commands, so
``ctrlpost --help`` and shell completion, which runs the program on every TAB, stay fast.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.completion import completion_init

from ctrlpost.cli.completion import (
    complete_checkpoint,
    complete_control_checkpoint,
    complete_control_modality,
    complete_data_source,
    complete_embed_device,
    complete_embed_precision,
    complete_folder,
    complete_modality,
    complete_override,
    complete_png,
    complete_recipe,
    complete_shell,
    complete_stages,
    completion_script,
)
from ctrlpost.cli.error_mapping import user_errors
from ctrlpost.cli.options import given_values, stage_names
from ctrlpost.cli.registry_help import PlainHelpCommand, PlainHelpGroup
from ctrlpost.errors import CtrlpostError, Stopped

app = typer.Typer(
    name="ctrlpost",
    cls=PlainHelpGroup,
    add_completion=False,  # one way to completion: the `completion` command's scripts
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The scripts ask through Typer's protocol (_CTRLPOST_COMPLETE=complete_bash), which Typer
# registers only along with the options that add_completion=False leaves out.
completion_init()


def command(name: str | None = None, **settings: Any) -> Any:
    """Register a command of ``app`` whose help reads plain (see ``registry_help``)."""
    return app.command(name, cls=PlainHelpCommand, **settings)


RecipeArg = Annotated[
    Path,
    typer.Argument(metavar="RECIPE", help="The recipe, a TOML file such as "
                   "recipes/edge_tiny.toml.", autocompletion=complete_recipe, show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", autocompletion=complete_override,
                 help="Override a recipe key before it is checked, e.g. --set train.steps=10 "
                 "(the value is TOML). Repeatable."),
]


def _version(value: bool) -> None:
    if value:
        from ctrlpost import __version__

        typer.echo(f"ctrlpost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Show the version and exit.", callback=_version,
                     is_eager=True),
    ] = False,
) -> None:
    """Post-train Cosmos-Transfer1 ControlNets on your own videos.

    [b]Workflow[/b]: fetch-weights → fetch-data → (annotate) → embed → verify → train → inspect.

    Set CTRLPOST_DEBUG=1 to see full tracebacks.
    """


# ---------------------------------------------------------------------------------------------
# fetch-weights


@command("fetch-weights", epilog="Examples:\n\n  ctrlpost fetch-weights "
         "recipes/edge_hdvila.toml --dry-run\n\n  HF_ENDPOINT=https://mirror.example "
         "ctrlpost fetch-weights recipes/blur_hdvila.toml --dir /data/checkpoints")
@user_errors
def fetch_weights(
    recipe: RecipeArg,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the files, their sizes and the free disk space; download "
        "nothing.")] = False,
    include_all: Annotated[bool, typer.Option(
        "--all", help="Also mirror every repository the reference uses (about 300 GB).")] = False,
    directory: Annotated[Path | None, typer.Option(
        "--dir", metavar="DIR", show_default=False, autocompletion=complete_folder,
        help="The folder to download into; default: \\[weights].dir.")] = None,
    modality: Annotated[list[str] | None, typer.Option(
        "--modality", metavar="NAME", show_default=False,
        autocompletion=complete_control_modality, help="Fetch this modality's released control "
        "checkpoint instead of the recipe's. Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    overrides: SetOpt = None,
) -> None:
    """Download the checkpoints a recipe needs into DIR/ORG/REPO/FILE.

    Verified files are skipped and interrupted downloads resume. The token comes from HF_TOKEN
    or `hf auth login`; set HF_ENDPOINT to use a mirror.

    Exits 0 when every file is in place and verified, 1 when files failed verification (they
    are deleted: run it again), and 2 when nothing more could be fetched (recipe, login,
    license, missing file, disk or network).
    """
    from ctrlpost import recipe as recipes
    from ctrlpost.cli.views import fetch_weights as weights_console

    loaded = recipes.load(recipe, overrides or [])
    weights_console.run(loaded.weights, flavor=loaded.model.flavor, root=directory,
                        modalities=modality or [c.modality for c in loaded.control],
                        modality_override=bool(modality), include_all=include_all,
                        dry_run=dry_run, as_json=as_json, rerun=f"ctrlpost fetch-weights {recipe}")


# ---------------------------------------------------------------------------------------------
# fetch-data


@command(
    "fetch-data",
    epilog="Examples:\n\n  ctrlpost fetch-data recipes/edge_tiny.toml\n\n"
    "  ctrlpost fetch-data recipes/edge_hdvila.toml --num-videos 8 --workers 4\n\n"
    "  ctrlpost fetch-data recipes/edge_hdvila.toml --source local "
    "--set data.local.videos=clips --set data.local.captions='\"clips/captions.csv\"'",
)
@user_errors
def fetch_data(
    recipe: RecipeArg,
    source: Annotated[
        str | None,
        typer.Option("--source", metavar="NAME", autocompletion=complete_data_source,
                     show_default=False, help="Where the clips come from: "
                     "{installed_data_sources}; default: \\[data].source."),
    ] = None,
    num_videos: Annotated[
        int | None,
        typer.Option("--num-videos", metavar="N", min=1, show_default=False,
                     help="How many HD-VILA videos (with all their clips), local files or "
                     "synthetic clips to fetch, at least 1."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", metavar="N", min=1, show_default=False,
                     help="How many downloads run in parallel, at least 1; default: "
                     "\\[data.fetch].workers."),
    ] = None,
    accept_partial: Annotated[
        bool, typer.Option("--accept-partial", help="Exit 0 even when some clips failed.")
    ] = False,
    overrides: SetOpt = None,
) -> None:
    """Make the dataset folder (\\[data].root): videos/, metas/ and manifest.jsonl.

    Running it again fetches only what is missing. Exits 0 when every clip is there, 1 when
    some failed (the manifest says why), and 2 on bad input.
    """
    from ctrlpost import recipe as recipes
    from ctrlpost.cli.views import fetch_data as console
    from ctrlpost.data.fetch import runner as fetch
    from ctrlpost.data.fetch import youtube
    from ctrlpost.modalities import registry

    loaded = recipes.load(recipe, overrides or [], values=given_values({
        "data.source": source, "data.fetch.workers": workers}))
    hint_files = [registry.control_hint_file(c.modality, c.params) for c in loaded.control]
    with console.progress_bar() as progress:
        result = fetch.fetch_data(loaded.data, seed=loaded.job.seed, num_videos=num_videos,
                                  youtube_factory=youtube.factory_from_env(), progress=progress,
                                  hint_files=[h for h in hint_files if h is not None])
    console.print_summary(result)
    if not result.complete and not accept_partial:
        raise fetch.FetchFailed(result)


# ---------------------------------------------------------------------------------------------
# annotate


@command(epilog="Examples:\n\n  ctrlpost annotate recipes/depth_hdvila.toml\n\n"
             "  ctrlpost annotate recipes/depth_tiny.toml --device cpu --batch-size 4")
@user_errors
def annotate(
    recipe: RecipeArg,
    modality: Annotated[str | None, typer.Option(
        "--modality", metavar="NAME", show_default=False, autocompletion=complete_modality,
        help="The modality to make hint files for; default: the recipe's.")] = None,
    device: Annotated[str, typer.Option(
        "--device", metavar="DEVICE", autocompletion=complete_embed_device,
        help="Where the models run: auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", metavar="N", min=1, max=4096,
        help="Frames per model call, from 1 to 4096.")] = 8,
    overrides: SetOpt = None,
) -> None:
    """Write the hint files the recipe's modality reads (e.g. depth/CLIP.mp4) for every clip.

    Files that exist and match their clip are kept, so running it again resumes. Exits 0 when
    every clip has its file, 1 when some clips failed (it names them), and 2 on bad input
    (modality, models or device).
    """
    from ctrlpost.cli.views import annotate as console

    console.run(recipe, overrides or [], modality=modality, device=device, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# embed


@command(
    epilog="Examples:\n\n  ctrlpost embed recipes/edge_hdvila.toml\n\n"
    "  ctrlpost embed recipes/edge_tiny.toml --device cpu --batch-size 8\n\n"
    "  ctrlpost embed recipes/edge_hdvila.toml --model /models/t5-11b",
)
@user_errors
def embed(
    recipe: RecipeArg,
    device: Annotated[
        str | None,
        typer.Option("--device", metavar="DEVICE", show_default=False,
                     autocompletion=complete_embed_device, help="Where T5 runs: auto, cpu, "
                     "cuda or cuda:N; default: data.embed.device."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", metavar="N", min=1, max=65535, show_default=False,
                     help="The most captions per encoder call, from 1 to 65535; default: "
                     "data.embed.batch_size."),
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option("--batch-tokens", metavar="N", min=1, show_default=False,
                     help="The most tokens per encoder call: the tokens it holds when packed "
                     "(GPU), captions × the longest when padded (CPU); default: "
                     "data.embed.batch_tokens."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", metavar="PATH", show_default=False,
                     autocompletion=complete_folder, help="The T5 encoder: a folder or a hub "
                     "id; default: weights.text_encoder, looked up under weights.dir first."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", metavar="DTYPE", show_default=False,
                     autocompletion=complete_embed_precision, help="The dtype of matrix "
                     "products on GPU, fp16 or bf16; default: data.embed.precision."),
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Encode every caption (metas/CLIP.txt) with T5 into t5_xxl/CLIP.pickle.

    Captions whose embedding already exists and is valid are skipped, so running it again
    resumes.
    """
    from ctrlpost import recipe as recipes
    from ctrlpost.embed import run as embedding

    loaded = recipes.load(recipe, overrides or [], values=given_values({
        "data.embed.device": device, "data.embed.batch_size": batch_size,
        "data.embed.batch_tokens": batch_tokens, "data.embed.precision": precision}))
    name = model or embedding.resolve_model(loaded.weights.text_encoder,
                                            weights_dir=loaded.weights.dir)
    summary = embedding.run(loaded.data.root, model=name, options=loaded.data.embed)
    typer.echo(summary.line())


# ---------------------------------------------------------------------------------------------
# verify


@command(
    epilog="Examples:\n\n  ctrlpost verify recipes/edge_hdvila.toml\n\n"
    "  ctrlpost verify recipes/edge_tiny.toml --set train.steps=10 --json\n\n"
    "  ctrlpost verify recipes/edge_hdvila.toml --fidelity --clips my_clips\n\n"
    "  ctrlpost verify recipes/edge_hdvila.toml --control RUN/checkpoints/"
    "iter_000005000_ema_model.pt",
)
@user_errors
def verify(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    show_recipe: Annotated[bool, typer.Option(
        "--show-recipe", help="Print the resolved recipe as TOML and exit.")] = False,
    stages: Annotated[
        str | None,
        typer.Option("--stages", metavar="NAMES", show_default=False,
                     autocompletion=complete_stages,
                     help="The stages to run, separated by commas, e.g. recipe,plugins; "
                     "default: all."),
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option("--preview", metavar="PATH", show_default=False, autocompletion=complete_png,
                     help="Also write a PNG contact sheet of training samples, frames above "
                     "hints."),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option("--gpus", metavar="N", min=1, show_default=False,
                     help="The GPUs the layout stage checks the memory estimate for, at "
                     "least 1; default: parallel.nnodes × parallel.nproc_per_node."),
    ] = None,
    gpu_memory: Annotated[
        float,
        typer.Option("--gpu-memory", metavar="GiB", min=1.0,
                     help="The memory of one GPU, in GiB, that the layout stage plans for; "
                     "at least 1."),
    ] = 80.0,
    deep: Annotated[bool, typer.Option("--deep", help="Let the data stage decode every frame of "
                                       "every clip (slow), not only the first and the last.")
                    ] = False,
    fidelity: Annotated[
        bool,
        typer.Option("--fidelity", help="Then generate the \\[validation] clips with the control "
                     "checkpoints and score them with the modality's fidelity metric; this "
                     "loads the model on this machine's device."),
    ] = False,
    control: Annotated[
        list[str] | None,
        typer.Option("--control", metavar="PATH", show_default=False,
                     autocompletion=complete_control_checkpoint,
                     help="A checkpoint for --fidelity to score (it implies --fidelity): a "
                     "released *_control.pt, an exported iter_*_ema_model.pt, or 'none' for "
                     "the base alone; default: weights.control. Repeatable."),
    ] = None,
    clips: Annotated[
        Path | None,
        typer.Option("--clips", metavar="DIR", show_default=False, autocompletion=complete_folder,
                     help="The folder of clips (videos/, t5_xxl/) that --fidelity scores (it "
                     "implies --fidelity); default: validation.root, else data.root."),
    ] = None,
) -> None:
    """Check a recipe and everything it needs before a run, and report every problem at once.

    With --fidelity, it also scores control checkpoints on your clips, e.g. the released
    branch against your post-trained one. Exits 0 when nothing is wrong and 2 when something
    is.
    """
    from ctrlpost import preflight

    if show_recipe:
        from ctrlpost import recipe as recipes

        typer.echo(recipes.dump_toml(recipes.load(recipe, overrides or [])), nl=False)
        return
    report = preflight.run(recipe, overrides or [], stages=stage_names(stages, preflight.STAGES),
                           gpus=gpus, gpu_memory_gib=gpu_memory, deep=deep)
    loaded = report.resolved  # loaded once, by the recipe stage
    score = None
    if (fidelity or control or clips) and report.ok:
        from ctrlpost.engine import build
        from ctrlpost.engine.evaluate import evaluate

        assert loaded is not None  # the recipe stage always runs
        plan = build.fidelity_plan(loaded, clips_root=str(clips) if clips else None)
        score = functools.partial(evaluate, plan, controls=control or [])
    if as_json:
        document = report.to_json()
        if score is not None:
            document["fidelity"] = score().to_json()
        typer.echo(json.dumps(document, indent=2))
    else:
        from ctrlpost.cli.views.verify import print_fidelity, print_report

        print_report(report)
        if score is not None:
            print_fidelity(score())
    ready = all(s.status == "ok" for s in report.stages if s.name in ("recipe", "plugins"))
    if preview is not None and ready and loaded is not None:
        from ctrlpost.data.preview import write_preview

        shown = write_preview(preview, data=loaded.data, control=loaded.control[0],
                              seed=loaded.job.seed)
        typer.echo(f"preview of {', '.join(shown)} written to {preview}", err=True)
    if not report.ok:
        raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------
# train


@command(
    epilog="Examples:\n\n  ctrlpost train recipes/edge_tiny.toml\n\n"
    "  ctrlpost train recipes/edge_hdvila.toml --nproc 8\n\n"
    "  torchrun --nnodes 2 --nproc-per-node 8 ... -m ctrlpost train recipes/edge_hdvila.toml",
)
@user_errors
def train(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    nproc: Annotated[
        int | None,
        typer.Option("--nproc", metavar="N", min=1, max=64, show_default=False,
                     help="The processes to start on this node, from 1 to 64; default: "
                     "parallel.nproc_per_node."),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option("--synthetic", help="Train random weights on random latents of the "
                     "recipe's geometry, with no checkpoint or data files (for benchmarks)."),
    ] = False,
) -> None:
    """Post-train the control branch: check everything first, then start the ranks.

    Running the same command again resumes from the latest complete checkpoint
    (checkpoint.resume = "auto"). SIGTERM or Ctrl-C saves a checkpoint and exits with 143 or
    130.
    """
    from ctrlpost import preflight
    from ctrlpost.cli.views.train import said_already_done
    from ctrlpost.engine.runtime import under_launcher

    overrides = overrides or []
    if under_launcher():
        stages = ["recipe", "plugins"]  # the user ran `ctrlpost verify`; ranks only re-check
    elif synthetic:
        stages = ["recipe", "plugins", "layout"]
    else:
        stages = list(preflight.STAGES)
    first_check = preflight.run(recipe, overrides, stages=["recipe"])
    resolved = first_check.resolved
    if resolved is not None and not under_launcher() and said_already_done(
            resolved.run_dir(), resolved.train.steps):
        return  # at once, without checks or ranks
    report = preflight.run(recipe, overrides, stages=stages, gpus=nproc,
                           resolved=first_check.resolved)
    if not report.ok:
        first = report.problems[0]
        raise CtrlpostError(
            f"{recipe}: {len(report.problems)} problem(s) before training; first: "
            f"{first.stage}: {first.path}: {first.message}",
            hint=f"run `ctrlpost verify {recipe}` to see them all",
        )
    loaded = report.resolved  # loaded once, by the recipe stage; ranks receive it resolved
    assert loaded is not None
    from ctrlpost.cli.views.train import launch  # engine.launch.launch, progress shown
    from ctrlpost.engine.build import training_plan  # torch: only once the checks passed

    plan = training_plan(loaded, recipe_name=recipe.name, synthetic=synthetic)
    try:
        launch(plan, nproc=nproc or loaded.parallel.nproc_per_node)
    except Stopped as stopped:
        typer.echo(stopped.message, err=True)
        raise typer.Exit(stopped.exit_code) from None


# ---------------------------------------------------------------------------------------------
# inspect


@command(
    "inspect",
    epilog="Examples:\n\n"
    "  ctrlpost inspect checkpoints/nvidia/Cosmos-Transfer1-7B/edge_control.pt\n\n"
    "  ctrlpost inspect RUN_DIR --plot metrics.png\n\n"
    "  ctrlpost inspect RUN_DIR/checkpoints/iter_000000020_reg_model.pt "
    "--diff RUN_DIR/checkpoints/iter_000000040_reg_model.pt --json",
)
@user_errors
def inspect_command(
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", help="A checkpoint (.pt) or a run folder.",
                       autocompletion=complete_checkpoint, show_default=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    diff: Annotated[
        Path | None,
        typer.Option("--diff", metavar="PATH", show_default=False,
                     autocompletion=complete_checkpoint, help="Compare with another checkpoint "
                     "of the same layout, module by module."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="PATH", show_default=False, autocompletion=complete_png,
                     help="For a run folder, draw the loss, learning rate, gradient norm and "
                     "fidelity against the step into this PNG file."),
    ] = None,
) -> None:
    """Summarise a checkpoint or a run: flavor, parameters, key accounting, EMA and metrics.

    It reads names and shapes memory-mapped and values one tensor at a time; no GPU is
    needed.
    """
    from ctrlpost.cli.views.inspect import show
    from ctrlpost.inspect.report import inspect_path

    show(inspect_path(path, diff=diff, plot=plot), as_json=as_json)


# ---------------------------------------------------------------------------------------------
# modalities


@command()
@user_errors
def modalities(
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="The modality whose parameters to show.",
                       autocompletion=complete_modality, show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """List installed control modalities, or the parameters of one."""
    from ctrlpost.modalities import registry

    if name is not None:
        modality = registry.get_modality(name)
        schema = modality.params_model.model_json_schema()
        exactness = registry.exactness(modality)
        if as_json:
            typer.echo(json.dumps({"name": modality.name, "params": schema,
                                   "exact_on": exactness}, indent=2))
            return
        from ctrlpost.cli.views.modalities import print_exactness, print_params

        print_params(modality, schema)
        print_exactness(exactness)
        return
    found = registry.installed_modalities()
    rows: list[dict[str, Any]] = [
        {"name": m.name, "from": registry.origin_of(m.name), "hint_key": m.hint_key,
         "presets": list(m.presets), "fidelity": registry.fidelity_headline(m),
         "summary": m.summary, "exact_on": registry.exactness(m)}
        for m in found.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "from", "presets", "fidelity", "summary")
    for row in rows:
        table.add_row(row["name"], row["from"], ", ".join(row["presets"]),
                      row["fidelity"] or "-", row["summary"])
    Console(highlight=False).print(table)


# ---------------------------------------------------------------------------------------------
# completion


@command()
@user_errors
def completion(
    shell: Annotated[
        str,
        typer.Argument(metavar="SHELL", help="The shell: bash, zsh or fish.",
                       autocompletion=complete_shell, show_default=False),
    ],
) -> None:
    """Print the shell completion script, which completions/ also ships.

    For bash: ctrlpost completion bash > ~/.local/share/bash-completion/completions/ctrlpost
    """
    typer.echo(completion_script(shell), nl=False)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ctrlpost")


if __name__ == "__main__":  # pragma: no cover
    main()
