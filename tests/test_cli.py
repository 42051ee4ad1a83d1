from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost import __version__
from ctrlpost.cli import app

runner = CliRunner()


def run_cli(exe: list[str], *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=120)


def test_help_and_version() -> None:
    result = runner.invoke(app, ["--help"], prog_name="ctrlpost")
    assert result.exit_code == 0
    for command in ("verify", "modalities", "completion"):
        assert command in result.output
    result = runner.invoke(app, ["--version"], prog_name="ctrlpost")
    assert result.exit_code == 0 and result.output.strip() == f"ctrlpost {__version__}"


def test_verify_shipped_recipe_json(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_hdvila.toml"), "--json",
                                 "--stages", "recipe,plugins"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["problems"] == []
    assert [s["name"] for s in report["stages"]] == ["recipe", "plugins"]
    assert report["stages"][1]["summary"]["controls"] == ["edge"]


def test_verify_runs_every_stage_by_default(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_hdvila.toml"), "--json",
                                 "--set", "weights.dir='/nonexistent'"])
    report = json.loads(result.output)
    names = [s["name"] for s in report["stages"]]
    assert names == ["recipe", "plugins", "weights", "data", "layout"]
    assert result.exit_code == 2 and {p["stage"] for p in report["problems"]} == {"weights", "data"}


def test_unknown_stage_is_an_input_error(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_hdvila.toml"),
                                 "--stages", "recipe,wieghts"])
    assert result.exit_code == 2


def test_typo_exits_2_with_one_line(tmp_path: Path, ctrlpost_exe: list[str]) -> None:
    recipe = tmp_path / "typo.toml"
    recipe.write_text('[job]\nname = "x"\n[[control]]\nmodality = "edge"\n[train]\nstpes = 10\n')
    result = run_cli(ctrlpost_exe, "verify", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {recipe}: train.stpes: unknown key; did you mean 'steps'?"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    shown = run_cli(ctrlpost_exe, "verify", str(recipe), "--show-recipe")
    assert shown.returncode == 2
    lines = shown.stderr.strip().splitlines()
    assert lines[0] == f"error: {recipe}: train.stpes: unknown key; did you mean 'steps'?"
    assert lines[1].startswith("hint: run `ctrlpost verify")


def test_verify_json_lists_plugin_problems(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[job]\nname = "x"\n[[control]]\nmodality = "egde"\n[train]\nsteps = 1\n')
    stages = ["--stages", "recipe,plugins"]
    result = runner.invoke(app, ["verify", str(recipe), "--json", *stages])
    assert result.exit_code == 2
    report = json.loads(result.output)
    (problem,) = report["problems"]
    assert problem["stage"] == "plugins" and problem["path"] == "control[0].modality"
    assert "installed: blur, depth, edge, keypoint, seg, upscale" in problem["message"]
    assert "did you mean 'edge'" in problem["message"]
    bad_params = runner.invoke(app, ["verify", str(recipe), "--json", *stages, "--set",
                                     "control.0.modality='edge'", "--set",
                                     "control.0.params={preset='loud'}"])
    assert bad_params.exit_code == 2
    (problem,) = json.loads(bad_params.output)["problems"]
    assert problem["path"] == "control[0].params.preset" and "edge plugin" in problem["message"]


def test_show_recipe_prints_resolved_toml(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_tiny.toml"), "--show-recipe",
                                 "--set", "train.steps=3"])
    assert result.exit_code == 0
    assert "[train]\nsteps = 3\n" in result.output and "sigma_data = 0.5" in result.output


def test_missing_recipe_is_input_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path / "none.toml")])
    assert result.exit_code == 2


def test_internal_errors_are_one_line_unless_debug(tmp_path: Path, ctrlpost_exe: list[str]) -> None:
    # A directory where a recipe file is expected is a user error, not a crash.
    result = run_cli(ctrlpost_exe, "verify", str(tmp_path))
    assert result.returncode == 2 and "recipe not found" in result.stderr
    assert "Traceback" not in result.stderr
    debug = run_cli(ctrlpost_exe, "verify", str(tmp_path), "--show-recipe",
                    env={"CTRLPOST_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_modalities_lists_plugins() -> None:
    result = runner.invoke(app, ["modalities", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["blur", "depth", "edge", "keypoint", "seg", "upscale"]
    assert rows[2]["from"].startswith("ctrlpost-edge")
    # The headline of each plugin's metric (the file-based modalities have none yet).
    assert [r["fidelity"] for r in rows] == ["psnr", None, "f1", None, None, None]
    table = runner.invoke(app, ["modalities"])
    assert table.exit_code == 0 and "fidelity" in table.output and "psnr" in table.output
    one = runner.invoke(app, ["modalities", "edge", "--json"])
    assert "preset" in json.loads(one.output)["params"]["properties"]
    unknown = runner.invoke(app, ["modalities", "edgy"])
    assert unknown.exit_code == 2


def test_modalities_say_on_which_opencv_hints_are_exact() -> None:
    import cv2

    declared = {"blur": ">=4.10,<4.12", "edge": ">=4.10,<5.2"}
    for name, versions in declared.items():
        entry = json.loads(runner.invoke(app, ["modalities", name, "--json"]).output)["exact_on"]
        assert entry == [{"library": "OpenCV", "module": "cv2", "versions": versions,
                          "why": entry[0]["why"], "installed": cv2.__version__,
                          "exact": True}], "the install does not keep OpenCV in the exact range"
        shown = " ".join(runner.invoke(app, ["modalities", name]).output.split())
        assert f"byte-identical to the reference's on OpenCV {versions}" in shown
        assert f"OpenCV {cv2.__version__} in use: exact" in shown


def test_help_does_not_import_torch(ctrlpost_exe: list[str]) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctrlpost", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "ctrlpost.cli" in imported
    heavy = {m for m in imported if m.split(".")[0] in {"torch", "transformers", "cv2"}}
    assert heavy == set()


def test_completion_does_not_import_torch() -> None:
    env = {**os.environ, "COMP_WORDS": "ctrlpost modalities ", "COMP_CWORD": "2",
           "_CTRLPOST_COMPLETE": "complete_bash"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctrlpost"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["blur", "depth", "edge", "keypoint", "seg", "upscale"]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] == "torch"}


# ---------------------------------------------------------------------------------------------
# bounded recipe values and file system errors, through the real commands

OUT_OF_BOUNDS = {
    "optim.lr=inf": ("optim.lr", "finite number"),
    "optim.lr=nan": ("optim.lr", "finite number"),
    "job.seed=18446744073709551616": ("job.seed", "at most 9223372036854775807"),
    "parallel.nproc_per_node=100000": ("parallel.nproc_per_node", "at most 64"),
    "job.name='../../../escape'": ("job.name", "e.g. 'escape'"),
    "train.steps=100000000000000000000": ("train.steps", "at most 999999999"),
}


@pytest.mark.parametrize("override", list(OUT_OF_BOUNDS))
def test_verify_rejects_out_of_bounds_values(repo: Path, override: str) -> None:
    recipe = repo / "recipes/edge_tiny.toml"
    result = runner.invoke(app, ["verify", str(recipe), "--stages", "recipe", "--set", override])
    key, needle = OUT_OF_BOUNDS[override]
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {recipe}: {key}: "), errors
    assert needle in errors[0] and "Traceback" not in result.output


def test_verify_reports_every_bound_at_once_in_one_line_each(tmp_path: Path,
                                                            ctrlpost_exe: list[str]) -> None:
    recipe = tmp_path / "bounds.toml"
    recipe.write_text('[job]\nname = "../../../escape"\nseed = 18446744073709551616\n'
                      '[[control]]\nmodality = "edge"\n[optim]\nlr = inf\n'
                      '[parallel]\nnproc_per_node = 100000\n[train]\nsteps = 5\n')
    result = run_cli(ctrlpost_exe, "verify", str(recipe), "--set", "optim.eps=nan",
                     "--set", "train.steps=100000000000000000000")
    assert result.returncode == 2
    keys = [line.split(": ")[2] for line in result.stderr.strip().splitlines()]
    assert sorted(keys) == ["job.name", "job.seed", "optim.eps", "optim.lr",
                            "parallel.nproc_per_node", "train.steps"], result.stderr
    assert all(line.startswith(f"error: {recipe}: ")
               for line in result.stderr.strip().splitlines())
    assert "Traceback" not in result.stderr + result.stdout


def _read_only_mount_works(tmp: Path) -> bool:
    probe = tmp / "probe"
    probe.mkdir()
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               READ_ONLY + "; exec touch \"$0/x\"", str(probe)],
                              capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return "Read-only file system" in done.stderr


# Remount folder $0 read-only in a private mount namespace (no one else sees it).
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0"'


def run_unwritable(exe: list[str], folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``folder`` unwritable to it: mode 0o555 for a normal user; for root,
    whom modes do not stop, a read-only bind mount of the folder (EROFS, as on a read-only
    volume) in a user and mount namespace of its own."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return run_cli(exe, *args)
        finally:
            folder.chmod(0o755)
    if not _read_only_mount_works(folder.parent):
        pytest.skip("running as root without `unshare` and mount namespaces")
    return run_cli(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                    READ_ONLY + ' && exec "$@"', str(folder), *exe], *args)


def assert_one_line_about(result: subprocess.CompletedProcess[str], path: Path,
                          fix: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    if os.geteuid() == 0:
        assert lines[0].startswith(f"error: cannot write {path}: read-only file system; ")
    else:
        assert lines[0].startswith(f"error: cannot access {path}: permission denied; ")
    assert lines[0].endswith(f"({fix})"), lines[0]
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_read_only_weights_folder(tmp_path: Path, repo: Path, ctrlpost_exe: list[str]) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    result = run_unwritable(ctrlpost_exe, weights, "fetch-weights",
                            str(repo / "recipes/edge_tiny.toml"),
                            "--set", f"weights.dir={json.dumps(str(weights))}")
    assert_one_line_about(result, weights / "ctrlpost", "--set weights.dir=DIR")
    assert list(weights.iterdir()) == []


def test_weights_folder_below_a_file(tmp_path: Path, repo: Path,
                                     ctrlpost_exe: list[str]) -> None:
    (tmp_path / "file").write_text("")
    weights = tmp_path / "file" / "weights"
    result = run_cli(ctrlpost_exe, "fetch-weights", str(repo / "recipes/edge_tiny.toml"),
                     "--set", f"weights.dir={json.dumps(str(weights))}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {weights}/") and "is a file, not a folder" in line
    assert "internal error" not in line


def test_unwritable_dataset_folder(tmp_path: Path, repo: Path, ctrlpost_exe: list[str]) -> None:
    recipe = str(repo / "recipes/edge_tiny.toml")
    weights, data = tmp_path / "weights", tmp_path / "data"
    made = runner.invoke(app, ["fetch-weights", recipe, "--set",
                               f"weights.dir={json.dumps(str(weights))}"])
    assert made.exit_code == 0, made.output
    (data / "metas").mkdir(parents=True)
    (data / "metas" / "clip0.txt").write_text("a red ball rolls across a striped floor\n")
    result = run_unwritable(ctrlpost_exe, data, "embed", recipe,
                            "--set", f"weights.dir={json.dumps(str(weights))}",
                            "--set", f"data.root={json.dumps(str(data))}")
    assert_one_line_about(result, data / "t5_xxl", "--set data.root=DIR")


def test_os_errors_name_the_path_and_the_fix(tmp_path: Path) -> None:
    """Every OSError escaping a command is one line and exit 2: full disk, a rename, no path."""
    import errno

    import typer

    from ctrlpost.cli.error_mapping import user_errors

    raised: list[OSError] = [
        OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.pt")),
        PermissionError(errno.EACCES, "Permission denied", "/a/b", None, "/a/c"),
        OSError(errno.ENOSPC, "No space left on device"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    ]
    small = typer.Typer()

    @small.command()
    @user_errors
    def embed(which: int) -> None:
        raise raised[which]

    lines = []
    for i in range(len(raised)):
        result = runner.invoke(small, [str(i)])
        assert result.exit_code == 2 and "internal error" not in result.output
        (line,) = result.stderr.strip().splitlines()
        lines.append(line)
    assert lines[0] == (f"error: cannot write {tmp_path / 'x.pt'}: no space left on the device; "
                        f"free space on {mount_point(tmp_path)} (see df -h) or choose a folder "
                        "on another disk (--set data.root=DIR)")
    assert lines[1].startswith("error: cannot access /a/b (to /a/c): permission denied; ")
    assert lines[2].startswith("error: no space left on the device; free space on the disk ")
    assert lines[3] == ("error: Connection refused; rerun with CTRLPOST_DEBUG=1 to see where "
                        "it happened")
    debug = runner.invoke(small, ["0"], env={"CTRLPOST_DEBUG": "1"})
    assert isinstance(debug.exception, OSError)


def mount_point(path: Path) -> Path:
    while not path.is_mount():
        path = path.parent
    return path


def test_train_refuses_more_local_processes_than_a_machine_runs() -> None:
    result = runner.invoke(app, ["train", "recipes/edge_tiny.toml", "--nproc", "100000"])
    assert result.exit_code == 2 and "--nproc" in result.output


def test_typed_options_reach_the_recipe_as_values_not_toml_text(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`embed --device` and `fetch-data --workers` set their recipe keys as typed values: a
    quote or a backslash in an option is not TOML syntax, and a number stays a number."""
    from types import SimpleNamespace

    from ctrlpost.data.fetch import runner as fetch
    from ctrlpost.embed import run as embedding

    seen: dict[str, Any] = {}

    def embed(root: str, *, model: str, options: Any) -> SimpleNamespace:
        seen["embed"] = options
        return SimpleNamespace(line=lambda: "embedded")

    def fetch_data(data: Any, **_: Any) -> SimpleNamespace:
        seen["data"] = data
        return SimpleNamespace(complete=True)

    monkeypatch.setattr(embedding, "resolve_model", lambda name, weights_dir: name)
    monkeypatch.setattr(embedding, "run", embed)
    device = 'cuda:0" batch_size = 1 \\'
    result = runner.invoke(app, ["embed", str(repo / "recipes/edge_tiny.toml"), "--device", device,
                                 "--batch-size", "3", "--precision", "bf16",
                                 "--set", "data.embed.batch_size=9"])
    assert result.exit_code == 0, result.output
    options = seen["embed"]
    assert (options.device, options.batch_size, options.precision) == (device, 3, "bf16")

    monkeypatch.setattr(fetch, "fetch_data", fetch_data)
    monkeypatch.setattr("ctrlpost.cli.views.fetch_data.print_summary", lambda result: None)
    result = runner.invoke(app, ["fetch-data", str(repo / "recipes/edge_tiny.toml"),
                                 "--workers", "5", "--source", "local"])
    assert result.exit_code == 0, result.output
    assert (seen["data"].fetch.workers, seen["data"].source) == (5, "local")
