"""`fetch-weights`: planning offline, and fetching from a local fake hub (tests/weights/fakehub.py).

No test touches the internet: the fake hub listens on 127.0.0.1 and serves small files under the
real repo names. In-process tests turn huggingface_hub's offline flag off with monkeypatch and
pass ``token=False`` (a developer's stored token never reaches the fake); CLI tests run the
program in a subprocess with ``HF_ENDPOINT`` set before huggingface_hub is imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost import recipe as recipes
from ctrlpost.cli import app
from ctrlpost.errors import CtrlpostError, WeightsError
from ctrlpost.weights import disk as weights_disk
from ctrlpost.weights import fetch as weights
from ctrlpost.weights.download import Retry
from ctrlpost.weights.fetch import FetchIncomplete, WeightsPlan

REPO = Path(__file__).resolve().parents[2]
EDGE = REPO / "recipes" / "edge_hdvila.toml"
BLUR = REPO / "recipes" / "blur_hdvila.toml"
TRANSFER = "nvidia/Cosmos-Transfer1-7B"
TOKENIZER = "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"
T5 = "google-t5/t5-11b"
FAST = Retry(attempts=2, wait_s=0.0)


def _load_fakehub() -> ModuleType:
    """tests/weights/fakehub.py (pytest runs with --import-mode=importlib: no sibling imports)."""
    name = "ctrlpost_tests_fakehub"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fakehub.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules[name]


fakehub = _load_fakehub()

#: What edge post-training needs, as the fake hub serves it (sizes in bytes; .pt/.jit/.bin = LFS).
CONTENT = {
    TRANSFER: {"base_model.pt": 300_000, "edge_control.pt": 40_000, "vis_control.pt": 40_000},
    TOKENIZER: {"encoder.jit": 20_000, "decoder.jit": 20_000, "mean_std.pt": 2_000},
    T5: {"config.json": 600, "pytorch_model.bin": 50_000, "spiece.model": 3_000,
         "tokenizer.json": 5_000, "tokenizer_config.json": 300},  # no special_tokens_map.json
}
EDGE_FILES = [f"{TRANSFER}/base_model.pt", f"{TRANSFER}/edge_control.pt",
              f"{TOKENIZER}/encoder.jit", f"{TOKENIZER}/decoder.jit", f"{TOKENIZER}/mean_std.pt",
              f"{T5}/config.json", f"{T5}/pytorch_model.bin", f"{T5}/spiece.model",
              f"{T5}/tokenizer.json", f"{T5}/tokenizer_config.json"]


def data(repo: str, name: str) -> bytes:
    return random.Random(f"{repo}/{name}").randbytes(CONTENT[repo][name])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with fakehub.FakeHub(tmp_path / "hub") as server:
        for repo, files in CONTENT.items():
            for name in files:
                server.write(repo, name, data(repo, name))
        yield server


def edge_plan(root: Path) -> WeightsPlan:
    loaded = recipes.load(EDGE)
    return weights.plan_downloads(loaded.weights, flavor="7b", modalities=["edge"], root=root)


def fetch(plan: WeightsPlan, hub: Any, **kwargs: Any) -> weights.FetchReport:
    return weights.fetch(plan, endpoint=hub.url, token=False, retry=kwargs.pop("retry", FAST),
                         **kwargs)


def resolve_gets(hub: Any) -> list[Any]:
    return [r for r in hub.requests() if "/resolve/" in r.path or r.path.startswith("/cdn/")]


# ---------------------------------------------------------------------------------------------
# planning, offline


def test_plan_lists_what_edge_post_training_needs(tmp_path: Path) -> None:
    plan = edge_plan(tmp_path / "ck")
    assert [f.name for f in plan.files] == [*EDGE_FILES, f"{T5}/special_tokens_map.json"]
    assert all(f.dest == tmp_path / "ck" / f.repo_id / f.path for f in plan.files)
    assert {f.name for f in plan.files if f.optional} == {
        f"{T5}/tokenizer_config.json", f"{T5}/special_tokens_map.json"}
    assert plan.files[0].size_source == "estimate" and plan.sizes_from == "catalog"
    assert plan.files[0].md5 == "356497b415f3b0697f8bb034d22b6807"
    assert plan.patterns == ()


def test_plan_control_from_recipe_or_modalities(tmp_path: Path) -> None:
    blur = recipes.load(BLUR).weights
    plan = weights.plan_downloads(blur, flavor="7b", modalities=["blur"])
    assert [f.path for f in plan.files if f.role == "control"] == ["vis_control.pt"]
    assert plan.root == Path("checkpoints")
    unset = blur.model_copy(update={"control": None})
    both = weights.plan_downloads(unset, flavor="7b", modalities=["edge", "blur", "edge"])
    assert [f.path for f in both.files if f.role == "control"] == ["edge_control.pt",
                                                                   "vis_control.pt"]
    forced = weights.plan_downloads(blur, flavor="7b", modalities=["edge"],
                                    control_from_modalities=True)
    assert [f.path for f in forced.files if f.role == "control"] == ["edge_control.pt"]
    with pytest.raises(WeightsError, match="no released control checkpoint"):
        weights.plan_downloads(unset, flavor="7b", modalities=["canny"])


def test_plan_local_paths_and_other_text_encoders(tmp_path: Path) -> None:
    section = recipes.load(EDGE).weights.model_copy(update={
        "base": "/data/my_base.pt", "text_encoder": "acme/t5-xl", "tokenizer": "./tok"})
    plan = weights.plan_downloads(section, flavor="7b", modalities=["edge"], root=tmp_path)
    assert [f.name for f in plan.files] == [f"{TRANSFER}/edge_control.pt"]
    assert [p.repo_id for p in plan.patterns] == ["acme/t5-xl"]
    assert "*.safetensors" in plan.patterns[0].patterns
    assert len(plan.notes) == 2 and all("not a hub path" in n for n in plan.notes)


def test_plan_all_adds_every_mirror_as_patterns(tmp_path: Path) -> None:
    plan = weights.plan_downloads(recipes.load(EDGE).weights, flavor="7b", modalities=["edge"],
                                  include_all=True, root=tmp_path)
    assert len(plan.patterns) == 11
    names = {f.name for f in plan.files}
    assert f"{TRANSFER}/vis_control.pt" in names and f"{TOKENIZER}/autoencoder.jit" in names
    by_name = {f.name: f for f in plan.files}
    assert not by_name[f"{TRANSFER}/base_model.pt"].optional  # still required for training
    assert by_name[f"{TRANSFER}/vis_control.pt"].optional


def test_tiny_flavor_makes_weights_locally() -> None:
    section = recipes.load(REPO / "recipes" / "edge_tiny.toml").weights
    made: list[Any] = []

    def maker(section: Any) -> list[str]:
        made.append(section)
        return ["x"]

    assert weights.make_tiny(section, maker=maker) == ["x"]
    assert made == [section]
    with pytest.raises(WeightsError, match="no released weights"):
        weights.plan_downloads(section, flavor="tiny", modalities=["edge"])
    if importlib.util.find_spec("ctrlpost.weights.tiny") is None:
        with pytest.raises(CtrlpostError, match="made locally"):
            weights.make_tiny(section)


def test_cli_dry_run_offline_lists_the_seed_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    runner = CliRunner()
    result = runner.invoke(app, ["fetch-weights", str(EDGE), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert [f"{f['repo']}/{f['file']}" for f in view["files"]] == [
        *EDGE_FILES, f"{T5}/special_tokens_map.json"]
    assert view["files"][0]["dest"] == "checkpoints/nvidia/Cosmos-Transfer1-7B/base_model.pt"
    assert {f["size_source"] for f in view["files"]} == {"estimate"}
    assert view["sizes_from"] == "catalog" and view["total_bytes"] > 60 * 10**9
    assert view["free_bytes"] > 0 and "HF_HUB_OFFLINE=1" in view["notes"][0]
    text = runner.invoke(app, ["fetch-weights", str(BLUR), "--dry-run", "--dir", "/w"])
    assert text.exit_code == 0, text.output
    assert "/w/nvidia/Cosmos-Transfer1-7B/vis_control.pt" in text.output
    assert "edge_control.pt" not in text.output and "(est.)" in text.output
    assert "total 62.0 GB (estimated)" in text.output


# ---------------------------------------------------------------------------------------------
# fetching from the fake hub (in-process API)


def test_fetch_writes_the_seed_layout_and_rerun_skips(hub: Any, tmp_path: Path) -> None:
    root = tmp_path / "ck"
    report = fetch(edge_plan(root), hub)
    assert [o.file.name for o in report.outcomes] == EDGE_FILES  # absent optional dropped
    assert {o.status for o in report.outcomes} == {"downloaded"}
    for name in EDGE_FILES:
        repo, file = name.rsplit("/", 1)
        assert (root / name).read_bytes() == data(repo, file)
    assert not list(root.rglob("*.incomplete"))
    by_name = {o.file.name: o for o in report.outcomes}
    base = by_name[f"{TRANSFER}/base_model.pt"].file
    assert base.sha256 == sha256(root / base.name) and base.size_source == "hub"
    assert by_name[f"{T5}/config.json"].file.git_sha1 is not None  # small file: git oid
    assert "reference's MD5" in by_name[f"{TRANSFER}/base_model.pt"].detail  # fake bytes
    assert (root / weights_disk.HASH_CACHE).is_file()

    def no_hashing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a re-run must not re-hash files with a valid cache entry")

    count = len(hub.requests())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights_disk, "hash_file", no_hashing)
        again = fetch(edge_plan(root), hub)
    assert {o.status for o in again.outcomes} == {"present"}
    new = hub.requests()[count:]
    assert not [r for r in new if "/resolve/" in r.path]  # no HEAD or GET of any file
    assert again.downloaded_bytes == 0


def test_dropped_connection_resumes_with_range(hub: Any, tmp_path: Path) -> None:
    hub.drop(TRANSFER, "base_model.pt", after_bytes=100_000)
    report = fetch(edge_plan(tmp_path), hub)
    assert not report.failed
    gets = [r for r in hub.requests("GET") if r.path.endswith("/base_model.pt")]
    assert [r.headers.get("range") for r in gets] == [None, "bytes=100000-"]
    assert (tmp_path / TRANSFER / "base_model.pt").read_bytes() == data(TRANSFER,
                                                                        "base_model.pt")


def test_interrupted_run_resumes_in_the_next_run(hub: Any, tmp_path: Path) -> None:
    hub.drop(TRANSFER, "base_model.pt", after_bytes=120_000, times=1)
    hub.drop(TRANSFER, "base_model.pt", after_bytes=0, times=None)  # then the network dies
    with pytest.raises(weights.HubUnreachable) as info:
        fetch(edge_plan(tmp_path), hub, retry=Retry(attempts=0, wait_s=0.0))
    assert info.value.exit_code == 2 and "resume" in (info.value.hint or "")
    (partial,) = (tmp_path / TRANSFER).glob("base_model.pt.*.incomplete")
    assert partial.stat().st_size == 120_000
    hub.faults.clear()
    report = fetch(edge_plan(tmp_path), hub)
    outcome = {o.file.name: o for o in report.outcomes}[f"{TRANSFER}/base_model.pt"]
    assert outcome.status == "downloaded" and "resumed at 120.0 kB" in outcome.detail
    assert outcome.downloaded_bytes == 300_000 - 120_000
    last = [r for r in hub.requests("GET") if r.path.endswith("/base_model.pt")][-1]
    assert last.headers.get("range") == "bytes=120000-"
    assert sha256(tmp_path / TRANSFER / "base_model.pt") == outcome.file.sha256
    assert not partial.exists()


def test_a_server_ignoring_range_restarts_the_file(hub: Any, tmp_path: Path) -> None:
    hub.drop(TRANSFER, "base_model.pt", after_bytes=50_000)
    hub.ignore_range(TRANSFER, "base_model.pt")
    report = fetch(edge_plan(tmp_path), hub)
    assert not report.failed
    gets = [r for r in hub.requests("GET") if r.path.endswith("/base_model.pt")]
    assert [r.headers.get("range") for r in gets] == [None, "bytes=50000-"]
    assert (tmp_path / TRANSFER / "base_model.pt").read_bytes() == data(TRANSFER,
                                                                        "base_model.pt")


def test_wrong_body_is_retried_then_reported_and_never_kept(hub: Any, tmp_path: Path) -> None:
    hub.wrong_body(TRANSFER, "edge_control.pt", times=None)
    hub.wrong_body(TOKENIZER, "encoder.jit", times=1)  # a one-off: the retry succeeds
    report = fetch(edge_plan(tmp_path), hub)
    (failed,) = report.failed
    assert failed.file.name == f"{TRANSFER}/edge_control.pt"
    assert failed.detail == "sha256 mismatch after 2 attempt(s)"
    assert not (tmp_path / TRANSFER / "edge_control.pt").exists()
    assert not list(tmp_path.rglob("*.incomplete"))
    assert (tmp_path / TOKENIZER / "encoder.jit").read_bytes() == data(TOKENIZER, "encoder.jit")
    assert len([o for o in report.outcomes if o.status == "downloaded"]) == 9
    with pytest.raises(FetchIncomplete) as info:
        report.raise_for_failures("ctrlpost fetch-weights r.toml")
    assert info.value.exit_code == 1
    assert "edge_control.pt (sha256 mismatch" in info.value.message
    assert info.value.hint == "re-run `ctrlpost fetch-weights r.toml`"


def test_corrupted_file_on_disk_is_replaced(hub: Any, tmp_path: Path) -> None:
    fetch(edge_plan(tmp_path), hub)
    target = tmp_path / T5 / "spiece.model"
    target.write_bytes(bytes(b ^ 1 for b in target.read_bytes()))  # same size, new mtime
    report = fetch(edge_plan(tmp_path), hub)
    outcome = {o.file.name: o for o in report.outcomes}[f"{T5}/spiece.model"]
    assert outcome.status == "downloaded"
    assert target.read_bytes() == data(T5, "spiece.model")
    assert any("git_sha1 mismatch" in n and "deleted" in n for n in report.notes)


def test_stale_partials_of_an_old_revision_are_dropped(hub: Any, tmp_path: Path) -> None:
    stale = tmp_path / TRANSFER / "edge_control.pt.0123456789ab.incomplete"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old revision")
    fetch(edge_plan(tmp_path), hub)
    assert not stale.exists()


def test_free_disk_shortfall_refuses_before_any_download(hub: Any, tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        fetch(edge_plan(tmp_path), hub, disk_usage=lambda path: SimpleNamespace(free=10_000))
    message = info.value.message
    assert message.startswith(f"not enough free disk space in {tmp_path}")
    assert "short by 1.0 GB" in message and "--dir" in (info.value.hint or "")
    assert resolve_gets(hub) == []
    assert not (tmp_path / TRANSFER).exists()


def test_disk_full_keeps_the_partial_and_names_the_folder(
        hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from ctrlpost.weights import download

    def full(f: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    monkeypatch.setattr(download, "_sync", full)
    with pytest.raises(WeightsError) as info:
        fetch(edge_plan(tmp_path), hub)
    assert info.value.message == f"disk full while writing into {tmp_path / TRANSFER}"
    assert info.value.exit_code == 2 and "resumes" in (info.value.hint or "")
    assert len(list((tmp_path / TRANSFER).glob("base_model.pt.*.incomplete"))) == 1


def test_hf_endpoint_is_read_at_call_time(hub: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub read HF_ENDPOINT when it was imported, long before this test.
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    report = weights.fetch(edge_plan(tmp_path), token=False, retry=FAST)
    assert not report.failed and hub.requests("GET", "/resolve/")


def test_all_mirrors_every_repo_by_pattern(hub: Any, tmp_path: Path) -> None:
    from ctrlpost.weights import catalog

    for mirror in catalog.mirror_repos():
        hub.write(mirror.repo_id, "README.md", b"# " + mirror.repo_id.encode())
    hub.write(catalog.UPSAMPLER, "depth/params.json", b"{}")
    hub.write(T5, "tf_model.h5", b"TF weights nothing here loads")
    hub.gate("meta-llama/Llama-Guard-3-8B", frozenset({"hf_llama"}))
    plan = weights.plan_downloads(recipes.load(EDGE).weights, flavor="7b", modalities=["edge"],
                                  include_all=True, root=tmp_path)
    report = weights.fetch(plan, endpoint=hub.url, token="hf_llama", retry=FAST)
    assert not report.failed
    names = {o.file.name for o in report.outcomes}
    assert {f"{m.repo_id}/README.md" for m in catalog.mirror_repos()
            if m.repo_id != T5} <= names
    assert f"{TRANSFER}/vis_control.pt" in names  # every released control file
    assert (tmp_path / catalog.UPSAMPLER / "depth" / "params.json").read_bytes() == b"{}"
    assert f"{T5}/tf_model.h5" not in names and f"{T5}/README.md" not in names
    assert f"{TRANSFER}/edge_control_distilled.pt" not in names  # catalogued, not on this hub


def test_gated_repo_with_an_accepted_token(hub: Any, tmp_path: Path) -> None:
    hub.gate(T5, frozenset({"hf_accepted"}))
    report = weights.fetch(edge_plan(tmp_path), endpoint=hub.url, token="hf_accepted",
                           retry=FAST)
    assert not report.failed
    gets = [r for r in hub.requests("GET") if r.path.startswith(f"/{T5}/resolve/")]
    assert gets and all(r.headers["authorization"] == "Bearer hf_accepted" for r in gets)


def test_lfs_redirect_to_a_cdn_drops_the_token(hub: Any, tmp_path: Path) -> None:
    hub.cdn_host = "localhost"  # another origin than 127.0.0.1, like the hub's CDN
    report = weights.fetch(edge_plan(tmp_path), endpoint=hub.url, token="hf_secret", retry=FAST)
    assert not report.failed
    cdn = hub.requests("GET", "/cdn/")
    assert len(cdn) == 6  # the .pt/.jit/.bin files
    assert all("authorization" not in r.headers for r in cdn)


def test_offline_checks_what_is_present(hub: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    fetch(edge_plan(tmp_path), hub)
    count = len(hub.requests())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    report = fetch(edge_plan(tmp_path), hub)
    assert len(hub.requests()) == count
    # Verified against the hub when downloaded (the cache says so, size and mtime unchanged).
    assert {o.status for o in report.outcomes} == {"present"}
    assert "HF_HUB_OFFLINE=1" in report.notes[-1]
    (tmp_path / weights_disk.HASH_CACHE).unlink()
    report = fetch(edge_plan(tmp_path), hub)
    # Without that record, only the reference's MD5s remain, which the fake bytes do not match.
    by_name = {o.file.name: o for o in report.outcomes}
    assert {o.status for o in report.outcomes} == {"unverified"}
    assert by_name[f"{TRANSFER}/base_model.pt"].detail == "md5 differs from the reference's"
    (tmp_path / TRANSFER / "edge_control.pt").unlink()
    with pytest.raises(WeightsError, match=r"HF_HUB_OFFLINE=1: 1 file\(s\) missing: "
                                           r"nvidia/Cosmos-Transfer1-7B/edge_control.pt"):
        fetch(edge_plan(tmp_path), hub)


def test_network_down_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    plan = weights.resolve_if_possible(edge_plan(tmp_path), endpoint=dead, token=False)
    assert plan.sizes_from == "catalog" and f"cannot reach {dead}" in plan.notes[-1]
    with pytest.raises(weights.HubUnreachable) as info:
        weights.fetch(edge_plan(tmp_path), endpoint=dead, token=False)
    assert "check the network" in (info.value.hint or "")
    assert "HF_ENDPOINT" in (info.value.hint or "")
    assert time.monotonic() - start < 5  # no retry-with-backoff on metadata


# ---------------------------------------------------------------------------------------------
# the CLI in a subprocess (HF_ENDPOINT is read when huggingface_hub is imported)


def run_cli(hub: Any, tmp_path: Path, *args: str, token: str | None = None,
            recipe: Path = EDGE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
               HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "ctrlpost", "fetch-weights", str(recipe),
                           "--dir", str(tmp_path / "ck"), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def one_error(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The single ``error:`` line and the ``hint:`` line of a failed run."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    hints = [line for line in lines if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, result.stderr
    return errors[0], hints[0]


def test_cli_fetch_then_rerun(hub: Any, tmp_path: Path) -> None:
    dry = run_cli(hub, tmp_path, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    view = json.loads(dry.stdout)
    assert view["sizes_from"] == "hub" and view["missing_bytes"] == view["total_bytes"]
    assert [f"{f['repo']}/{f['file']}" for f in view["files"]] == EDGE_FILES
    first = run_cli(hub, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "fetch-weights: 10 downloaded" in first.stdout
    assert (tmp_path / "ck" / TRANSFER / "base_model.pt").read_bytes() == data(
        TRANSFER, "base_model.pt")
    count = len(hub.requests())
    again = run_cli(hub, tmp_path)
    assert again.returncode == 0 and "0 downloaded (0 B), 10 already in place" in again.stdout
    assert not [r for r in hub.requests()[count:] if "/resolve/" in r.path]


def test_cli_not_logged_in(hub: Any, tmp_path: Path) -> None:
    hub.gate(TRANSFER)
    result = run_cli(hub, tmp_path)
    assert result.returncode == 2
    error, hint = one_error(result)
    assert error.startswith("error: not logged in to the hub (HTTP 401 for "
                            "nvidia/Cosmos-Transfer1-7B/base_model.pt)")
    assert "run `hf auth login` or set HF_TOKEN" in hint
    assert resolve_gets(hub) == [r for r in resolve_gets(hub) if r.method == "HEAD"]


def test_cli_license_not_accepted(hub: Any, tmp_path: Path) -> None:
    hub.gate(TRANSFER, frozenset({"hf_other"}))
    result = run_cli(hub, tmp_path, token="hf_mine")
    assert result.returncode == 2
    error, hint = one_error(result)
    assert error == ("error: license of nvidia/Cosmos-Transfer1-7B not accepted by this "
                     "account (HTTP 403, gated repo)")
    assert "accept the license at https://huggingface.co/nvidia/Cosmos-Transfer1-7B" in hint
    assert not [r for r in resolve_gets(hub) if r.method == "GET"]  # failed before downloading


def test_cli_missing_file_and_missing_repo(hub: Any, tmp_path: Path) -> None:
    (hub.root / TRANSFER / "edge_control.pt").unlink()
    result = run_cli(hub, tmp_path)
    assert result.returncode == 2
    error, hint = one_error(result)
    assert error == (f"error: file edge_control.pt not found in repo {TRANSFER} on {hub.url}")
    assert "check [weights] in the recipe" in hint
    result = run_cli(hub, tmp_path, "--set", 'weights.tokenizer="nvidia/Cosmos-Nope"')
    assert result.returncode == 2
    error, hint = one_error(result)
    assert error == f"error: repo nvidia/Cosmos-Nope not found on {hub.url}"
    assert "check the repo ids in [weights]" in hint
    hub.fail(T5, "spiece.model", 404, error_code="EntryNotFound", message="Entry not found")
    result = run_cli(hub, tmp_path, "--set", "weights.control='nvidia/Cosmos-Transfer1-7B/"
                     "vis_control.pt'")
    error, _ = one_error(result)
    assert result.returncode == 2 and error.startswith("error: file spiece.model not found")
    assert resolve_gets(hub) == [r for r in resolve_gets(hub) if r.method == "HEAD"]


def test_cli_hash_failure_exits_1(hub: Any, tmp_path: Path) -> None:
    hub.wrong_body(TRANSFER, "edge_control.pt")
    result = run_cli(hub, tmp_path)
    assert result.returncode == 1, result.stderr
    error, hint = one_error(result)
    assert error.startswith("error: 1 file(s) failed verification and were deleted: "
                            "nvidia/Cosmos-Transfer1-7B/edge_control.pt (sha256 mismatch")
    assert hint == f"hint: re-run `ctrlpost fetch-weights {EDGE}`"
    assert not (tmp_path / "ck" / TRANSFER / "edge_control.pt").exists()
    assert (tmp_path / "ck" / TRANSFER / "base_model.pt").is_file()


def test_cli_persistent_5xx_exits_2_with_one_line(hub: Any, tmp_path: Path) -> None:
    # Retry-After: 0 lets the default policy (5 retries) run out without waiting.
    hub.fail(TRANSFER, "base_model.pt", 503, method="GET", retry_after="0")
    result = run_cli(hub, tmp_path)
    assert result.returncode == 2, result.stderr
    error, hint = one_error(result)
    assert error == (f"error: the hub at {hub.url} answered HTTP 503 for "
                     f"{TRANSFER}/base_model.pt 6 times in a row")
    assert "re-run later (partial downloads resume)" in hint
    assert len([r for r in hub.requests("GET") if r.path.endswith("/base_model.pt")]) == 6


def test_cli_offers_the_command_and_its_options() -> None:
    def complete(words: str) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        env = {"COMP_WORDS": words, "COMP_CWORD": str(cword),
               "_CTRLPOST_COMPLETE": "complete_bash"}
        return CliRunner().invoke(app, [], env=env, prog_name="ctrlpost").output.split()

    assert "fetch-weights" in complete("ctrlpost ")
    assert complete("ctrlpost fetch-w") == ["fetch-weights"]
    assert complete("ctrlpost fetch-weights --") == [
        "--dry-run", "--all", "--dir", "--modality", "--json", "--set", "--help"]
    assert complete("ctrlpost fetch-weights x.toml --modality ") == [
        "blur", "depth", "edge", "keypoint", "seg", "upscale"]
