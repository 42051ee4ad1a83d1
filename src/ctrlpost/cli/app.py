"""The ``ctrlpost`` command line: one thin function per command.

Heavy modules (torch, transformers, cv2, pydantic models) are imported inside the commands, so
``ctrlpost --help`` and shell completion, which runs the program on every TAB, stay fast.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ctrlpost.cli.completion import (
    SHELLS,
    complete_control_modality,
    complete_data_source,
    complete_embed_device,
    complete_embed_precision,
    complete_modality,
    complete_override,
    complete_recipe,
    complete_shell,
    complete_stages,
)
from ctrlpost.cli.error_mapping import user_errors
from ctrlpost.cli.options import given_values, stage_names
from ctrlpost.cli.registry_help import RegistryHelp
from ctrlpost.errors import CtrlpostError, Stopped

app = typer.Typer(
    name="ctrlpost",
    help="Post-train Cosmos-Transfer1 ControlNets: fetch-weights, fetch-data, annotate, embed, "
    "verify, train, inspect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ---------------------------------------------------------------------------------------------
# completion helpers: cheap, no torch


RecipeArg = Annotated[
    Path,
    typer.Argument(
        help="Recipe TOML file, e.g. recipes/edge_tiny.toml.",
        autocompletion=complete_recipe,
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a recipe key before validation: --set train.steps=10 (value is TOML).",
        metavar="KEY=VALUE",
        autocompletion=complete_override,
    ),
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
# verify


@app.command(
    epilog="Examples:\n\n  ctrlpost verify recipes/edge_hdvila.toml\n\n"
    "  ctrlpost verify recipes/edge_tiny.toml --set train.steps=10 --json\n\n"
    "  ctrlpost verify recipes/edge_hdvila.toml --fidelity --clips my_clips "
    "--control nvidia/Cosmos-Transfer1-7B/edge_control.pt --control RUN/checkpoints/"
    "iter_000005000_ema_model.pt",
)
@user_errors
def verify(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    show_recipe: Annotated[
        bool, typer.Option("--show-recipe", help="Print the resolved recipe (TOML) and exit.")
    ] = False,
    stages: Annotated[
        str | None,
        typer.Option("--stages", metavar="NAMES", show_default=False,
                     autocompletion=complete_stages,
                     help="Comma-separated stages to run (default: all), e.g. recipe,plugins."),
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option("--preview", metavar="OUT.png", show_default=False,
                     help="Also write a contact sheet of training samples: frames above hints."),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option("--gpus", metavar="N", min=1, show_default=False,
                     help="GPUs the layout stage checks the memory estimate for "
                     "(default: parallel.nnodes × parallel.nproc_per_node)."),
    ] = None,
    gpu_memory: Annotated[
        float,
        typer.Option("--gpu-memory", metavar="GiB", min=1.0,
                     help="Memory of one GPU for the layout stage."),
    ] = 80.0,
    deep: Annotated[bool, typer.Option("--deep", help="Data stage: decode every frame of every "
                                       "clip (slow), not just the first and the last.")] = False,
    fidelity: Annotated[
        bool,
        typer.Option("--fidelity", help="Then generate the \\[validation] clips with the control "
                     "checkpoint(s) and score them with the modality's fidelity metric "
                     "(loads the model on this machine's device)."),
    ] = False,
    control: Annotated[
        list[str] | None,
        typer.Option("--control", metavar="PATH|none", show_default=False,
                     help="Checkpoint scored by --fidelity (repeatable, implies it): a released "
                     "*_control.pt, an exported iter_*_ema_model.pt, or 'none' (base alone); "
                     "default: weights.control."),
    ] = None,
    clips: Annotated[
        Path | None,
        typer.Option("--clips", metavar="DIR", show_default=False,
                     help="Folder of clips (videos/, t5_xxl/) scored by --fidelity (implies it); "
                     "default: validation.root, else data.root."),
    ] = None,
) -> None:
    """Check a recipe and everything it needs before a run; report every problem at once.

    With --fidelity, also score control checkpoints on your clips, e.g. the released branch
    against your post-trained one. Exits 0 when nothing is wrong, 2 when something is.
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
# modalities


@app.command()
@user_errors
def modalities(
    name: Annotated[
        str | None,
        typer.Argument(help="Show one modality's parameters.", autocompletion=complete_modality,
                       show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
# fetch-data


@app.command(
    "fetch-data",
    epilog="Examples:\n\n  ctrlpost fetch-data recipes/edge_tiny.toml\n\n"
    "  ctrlpost fetch-data recipes/edge_hdvila.toml --num-videos 8 --workers 4\n\n"
    "  ctrlpost fetch-data recipes/edge_hdvila.toml --source local "
    "--set data.local.videos=clips --set data.local.captions='\"clips/captions.csv\"'",
    cls=RegistryHelp,
)
@user_errors
def fetch_data(
    recipe: RecipeArg,
    source: Annotated[
        str | None,
        typer.Option("--source", help="One of {installed_data_sources}; default: "
                     "\\[data].source.",
                     autocompletion=complete_data_source, show_default=False),
    ] = None,
    num_videos: Annotated[
        int | None,
        typer.Option("--num-videos", min=1, show_default=False,
                     help="HD-VILA videos (all their clips), local files or synthetic clips."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, show_default=False,
                     help="Parallel downloads; default: \\[data.fetch].workers."),
    ] = None,
    accept_partial: Annotated[
        bool, typer.Option("--accept-partial", help="Exit 0 even if some clips failed.")
    ] = False,
    overrides: SetOpt = None,
) -> None:
    """Make the dataset folder (\\[data].root): videos/, metas/ and manifest.jsonl.

    Re-running fetches only what is missing. Exits 0 when every clip is there, 1 when some
    failed (the manifest says why), 2 on bad input.
    """
    from ctrlpost import recipe as recipes
    from ctrlpost.cli.views import fetch_data as console
    from ctrlpost.data.fetch import runner as fetch
    from ctrlpost.data.fetch import youtube
    from ctrlpost.modalities import registry

    loaded = recipes.load(recipe, overrides or [], values=given_values({
        "data.source": source, "data.fetch.workers": workers}))
    hint_files = [registry.get_modality(c.modality).hint_file for c in loaded.control]
    with console.progress_bar() as progress:
        result = fetch.fetch_data(loaded.data, seed=loaded.job.seed, num_videos=num_videos,
                                  youtube_factory=youtube.factory_from_env(), progress=progress,
                                  hint_files=[h for h in hint_files if h is not None])
    console.print_summary(result)
    if not result.complete and not accept_partial:
        raise fetch.FetchFailed(result)


# ---------------------------------------------------------------------------------------------
# annotate


@app.command(epilog="Examples:\n\n  ctrlpost annotate recipes/depth_hdvila.toml\n\n"
             "  ctrlpost annotate recipes/depth_tiny.toml --device cpu --batch-size 4")
@user_errors
def annotate(
    recipe: RecipeArg,
    modality: Annotated[str | None, typer.Option(
        "--modality", show_default=False, autocompletion=complete_modality,
        help="The modality to make files for; default: the recipe's.")] = None,
    device: Annotated[str, typer.Option(
        "--device", autocompletion=complete_embed_device, help="auto, cpu, cuda or cuda:N.")
    ] = "auto",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, max=4096, help="Frames per model call.")] = 8,
    overrides: SetOpt = None,
) -> None:
    """Write the hint files the recipe's modality reads (e.g. depth/<clip>.mp4) for every clip.

    Files that exist and match their clip are kept, so a rerun resumes. Exit 0: every clip has
    its file; 1: some clips failed (named); 2: bad input (modality, models, device).
    """
    from ctrlpost.cli.views import annotate as console

    console.run(recipe, overrides or [], modality=modality, device=device, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# embed


@app.command(
    epilog="Examples:\n\n  ctrlpost embed recipes/edge_hdvila.toml\n\n"
    "  ctrlpost embed recipes/edge_tiny.toml --device cpu --batch-size 8\n\n"
    "  ctrlpost embed recipes/edge_hdvila.toml --model /models/t5-11b",
)
@user_errors
def embed(
    recipe: RecipeArg,
    device: Annotated[
        str | None,
        typer.Option("--device", show_default=False, autocompletion=complete_embed_device,
                     help="auto, cpu, cuda or cuda:N; default: the recipe's data.embed.device."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, max=65535, show_default=False,
                     help="Most captions per encoder call; default: data.embed.batch_size."),
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option("--batch-tokens", min=1, show_default=False,
                     help="Most tokens per encoder call (packed on GPU: the tokens it "
                     "holds; padded: captions x longest); default: data.embed.batch_tokens."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", metavar="PATH_OR_HUB_ID", show_default=False,
                     help="T5 encoder folder or hub id; default: weights.text_encoder, "
                     "looked up under weights.dir first."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", show_default=False, autocompletion=complete_embed_precision,
                     help="fp16 or bf16: GPU matrix products; default: data.embed.precision."),
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Encode every caption (metas/<clip>.txt) with T5 into t5_xxl/<clip>.pickle.

    Captions whose embedding already exists and is valid are skipped, so a rerun resumes.
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
# fetch-weights


@app.command("fetch-weights", epilog="Examples:\n\n  ctrlpost fetch-weights "
             "recipes/edge_hdvila.toml --dry-run\n\n  HF_ENDPOINT=https://mirror.example "
             "ctrlpost fetch-weights recipes/blur_hdvila.toml --dir /data/checkpoints")
@user_errors
def fetch_weights(
    recipe: RecipeArg,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List files, sizes and free disk; download nothing.")] = False,
    include_all: Annotated[bool, typer.Option(
        "--all", help="Also mirror every repo the reference uses (~300 GB).")] = False,
    directory: Annotated[Path | None, typer.Option(
        "--dir", show_default=False, help="Root folder; default: \\[weights].dir.")] = None,
    modality: Annotated[list[str] | None, typer.Option(
        "--modality", show_default=False, autocompletion=complete_control_modality,
        help="Fetch this modality's released control file instead (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    overrides: SetOpt = None,
) -> None:
    """Download the checkpoints a recipe needs into <dir>/<org>/<repo>/<file>.

    Verified files are skipped; interrupted downloads resume.
    Token: HF_TOKEN or `hf auth login`. Mirror: HF_ENDPOINT.
    Exit 0: all in place and verified; 1: files failed verification (deleted: re-run);
    2: nothing more could be fetched (recipe, login, license, missing file, disk, network).
    """
    from ctrlpost import recipe as recipes
    from ctrlpost.cli.views import fetch_weights as weights_console

    loaded = recipes.load(recipe, overrides or [])
    weights_console.run(loaded.weights, flavor=loaded.model.flavor, root=directory,
                        modalities=modality or [c.modality for c in loaded.control],
                        modality_override=bool(modality), include_all=include_all,
                        dry_run=dry_run, as_json=as_json, rerun=f"ctrlpost fetch-weights {recipe}")


# ---------------------------------------------------------------------------------------------
# train


@app.command(
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
        typer.Option("--nproc", min=1, max=64, show_default=False,
                     help="Processes on this node (default: parallel.nproc_per_node)."),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option("--synthetic", help="Random weights and random latents of the recipe's "
                     "geometry: no checkpoint or data files needed (benchmarks)."),
    ] = False,
) -> None:
    """Post-train the control branch: checks everything first, then starts the ranks.

    Re-running the same command resumes from the latest complete checkpoint
    (checkpoint.resume = "auto"). SIGTERM or Ctrl-C saves a checkpoint and exits with 143 / 130.
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
    from ctrlpost.engine.build import training_plan  # torch: only once the checks passed
    from ctrlpost.engine.launch import launch

    plan = training_plan(loaded, recipe_name=recipe.name, synthetic=synthetic)
    try:
        launch(plan, nproc=nproc or loaded.parallel.nproc_per_node)
    except Stopped as stopped:
        typer.echo(stopped.message, err=True)
        raise typer.Exit(stopped.exit_code) from None


# ---------------------------------------------------------------------------------------------
# inspect


@app.command(
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
        typer.Argument(help="A checkpoint (.pt) or a run directory.", show_default=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    diff: Annotated[
        Path | None,
        typer.Option("--diff", metavar="OTHER", show_default=False,
                     help="Compare with another checkpoint of the same layout, module by module."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="OUT.png", show_default=False,
                     help="Run directory only: draw loss, lr, grad norm (and fidelity) vs step."),
    ] = None,
) -> None:
    """Summarise a checkpoint or a run: flavor, parameters, key accounting, EMA, metrics.

    Reads names and shapes memory-mapped, values one tensor at a time; no GPU needed.
    """
    from ctrlpost.cli.views.inspect import show
    from ctrlpost.inspect.report import inspect_path

    show(inspect_path(path, diff=diff, plot=plot), as_json=as_json)


# ---------------------------------------------------------------------------------------------
# completion


@app.command()
@user_errors
def completion(
    shell: Annotated[
        str,
        typer.Argument(help="bash, zsh or fish.", autocompletion=complete_shell,
                       show_default=False),
    ],
) -> None:
    """Print the shell completion script.

    bash: ctrlpost completion bash > ~/.local/share/bash-completion/completions/ctrlpost
    """
    typer.echo(completion_script(shell), nl=False)


def completion_script(shell: str) -> str:
    """The completion script Typer generates for ``shell``, for the program ``ctrlpost``."""
    if shell not in SHELLS:
        raise CtrlpostError(f"unknown shell {shell!r}", hint=f"choose one of: {', '.join(SHELLS)}")
    import io
    from contextlib import redirect_stdout, suppress

    env_var = "_CTRLPOST_COMPLETE"
    previous = os.environ.get(env_var)
    os.environ[env_var] = f"source_{shell}"
    buffer = io.StringIO()
    try:
        with redirect_stdout(buffer), suppress(SystemExit):
            app(prog_name="ctrlpost", args=[])
    finally:
        if previous is None:
            del os.environ[env_var]
        else:
            os.environ[env_var] = previous
    return buffer.getvalue()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ctrlpost")


if __name__ == "__main__":  # pragma: no cover
    main()
