"""Retries and verification of `fetch-weights` downloads, against faults of the fake hub.

The fake hub (tests/weights/fakehub.py) answers 5xx / 429 (with or without ``Retry-After``) on the
listing, the HEAD access check or the GET of a file, drops connections mid-body and misreports
hashes; these tests drive :func:`ctrlpost.weights.fetch.fetch`, the function the CLI calls, and
read the server's request log for what the client did and when.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import random
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from ctrlpost.cli.views import fetch_weights as weights_console
from ctrlpost.errors import WeightsError
from ctrlpost.weights import download
from ctrlpost.weights import fetch as weights
from ctrlpost.weights.download import Expected, HashMismatch, Retry, no_progress
from ctrlpost.weights.fetch import PlannedFile, WeightsPlan

REPO_ID = "acme/weights"
MODEL = "model.safetensors"  # an LFS file: the hub gives its sha256
CONFIG = "config.json"  # a git file: the hub gives its git blob id
SIZES = {MODEL: 200_000, CONFIG: 700}
NO_WAIT = Retry(attempts=2, wait_s=0.0)


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


def data(name: str) -> bytes:
    return random.Random(f"{REPO_ID}/{name}").randbytes(SIZES[name])


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with fakehub.FakeHub(tmp_path / "hub") as server:
        for name in SIZES:
            server.write(REPO_ID, name, data(name))
        yield server


def plan(root: Path) -> WeightsPlan:
    files = tuple(PlannedFile(REPO_ID, name, root / REPO_ID / name, role="test") for name in SIZES)
    return WeightsPlan(root=root, files=files)


def fetch(hub: Any, root: Path, retry: Retry = NO_WAIT) -> weights.FetchReport:
    return weights.fetch(plan(root), endpoint=hub.url, token=False, retry=retry)


def outcome(report: weights.FetchReport, name: str) -> weights.FileOutcome:
    return {o.file.path: o for o in report.outcomes}[name]


def listings(hub: Any) -> list[Any]:
    return hub.requests("GET", f"/api/models/{REPO_ID}")


def file_requests(hub: Any, method: str, name: str = MODEL) -> list[Any]:
    return [r for r in hub.requests(method, "/resolve/") if r.path.endswith(f"/{name}")]


def assert_complete_and_verified(report: weights.FetchReport, root: Path) -> None:
    assert not report.failed
    assert {o.status for o in report.outcomes} == {"downloaded"}
    for name in SIZES:
        assert (root / REPO_ID / name).read_bytes() == data(name)
    assert outcome(report, MODEL).file.sha256 == hashlib.sha256(data(MODEL)).hexdigest()
    assert outcome(report, CONFIG).file.git_sha1 == fakehub.git_blob_sha1(data(CONFIG))
    assert not list(root.rglob("*.incomplete"))


# ---------------------------------------------------------------------------------------------
# the policy


def http_error(status: int, retry_after: str | None = None) -> Exception:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    exc = Exception(f"HTTP {status}")
    exc.response = SimpleNamespace(status_code=status, headers=headers)  # type: ignore[attr-defined]
    return exc


def test_backoff_doubles_up_to_its_cap() -> None:
    retry = Retry(wait_s=1.0, max_wait_s=8.0)
    assert [retry.delay_s(n, http_error(500)) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_retry_after_replaces_the_backoff_on_429_and_503_only() -> None:
    retry = Retry(wait_s=1.0, max_retry_after_s=120.0)
    assert retry.delay_s(1, http_error(503, "7")) == 7
    assert retry.delay_s(3, http_error(429, "0")) == 0
    assert retry.delay_s(1, http_error(500, "7")) == 1  # not a header 500 carries
    assert retry.delay_s(2, http_error(503, "soon")) == 2  # unreadable: the backoff
    assert retry.delay_s(1, http_error(429, "3600")) == 120  # capped: never hangs the command
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry.delay_s(1, http_error(503, later)) <= 30


def test_only_5xx_and_429_are_transient() -> None:
    assert all(download.is_transient_status(s) for s in (429, 500, 502, 503, 504))
    assert not any(download.is_transient_status(s) for s in (None, 400, 401, 403, 404, 416))


# ---------------------------------------------------------------------------------------------
# transient faults: retried, and the files end complete and verified


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_listing_errors_are_retried(hub: Any, tmp_path: Path, status: int) -> None:
    hub.fail_listing(REPO_ID, status, times=2)
    report = fetch(hub, tmp_path)
    assert len(listings(hub)) == 3
    assert_complete_and_verified(report, tmp_path)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_access_check_errors_are_retried(hub: Any, tmp_path: Path,
                                                   status: int) -> None:
    hub.fail(REPO_ID, MODEL, status, times=2, method="HEAD")
    report = fetch(hub, tmp_path)
    assert len(file_requests(hub, "HEAD")) == 3
    assert_complete_and_verified(report, tmp_path)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_download_errors_are_retried(hub: Any, tmp_path: Path, status: int) -> None:
    hub.fail(REPO_ID, MODEL, status, times=2, method="GET")
    hub.fail(REPO_ID, CONFIG, status, times=1, method="GET")
    report = fetch(hub, tmp_path)
    assert len(file_requests(hub, "GET")) == 3
    assert len(file_requests(hub, "GET", CONFIG)) == 2
    assert_complete_and_verified(report, tmp_path)


def test_5xx_after_a_drop_mid_file_keeps_resuming(hub: Any, tmp_path: Path) -> None:
    hub.drop(REPO_ID, MODEL, after_bytes=80_000)
    # The resuming Range requests meet a restarting hub: 503, then 500, then the bytes.
    hub.fail(REPO_ID, MODEL, 503, times=1, method="GET", after_requests=1)
    hub.fail(REPO_ID, MODEL, 500, times=1, method="GET", after_requests=2)
    report = fetch(hub, tmp_path)
    gets = file_requests(hub, "GET")
    assert [r.headers.get("range") for r in gets] == [None, *["bytes=80000-"] * 3]
    assert_complete_and_verified(report, tmp_path)
    assert outcome(report, MODEL).downloaded_bytes == SIZES[MODEL]


# ---------------------------------------------------------------------------------------------
# waiting: Retry-After, else exponential backoff


def gaps(requests: list[Any]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def test_retry_after_is_honoured_on_downloads(hub: Any, tmp_path: Path) -> None:
    hub.fail(REPO_ID, MODEL, 503, times=1, method="GET", retry_after="1")
    report = fetch(hub, tmp_path)  # the policy itself would not wait at all (wait_s=0)
    (gap,) = gaps(file_requests(hub, "GET"))
    assert 1.0 <= gap < 4.0
    assert_complete_and_verified(report, tmp_path)


def test_retry_after_is_honoured_on_the_listing(hub: Any, tmp_path: Path) -> None:
    hub.fail_listing(REPO_ID, 429, times=1, retry_after="1")
    fetch(hub, tmp_path)
    (gap,) = gaps(listings(hub))
    assert 1.0 <= gap < 4.0


def test_without_retry_after_the_waits_double(hub: Any, tmp_path: Path) -> None:
    hub.fail(REPO_ID, MODEL, 429, times=2, method="HEAD")
    fetch(hub, tmp_path, Retry(attempts=2, wait_s=0.2))
    first, second = gaps(file_requests(hub, "HEAD"))
    assert 0.2 <= first < 2.0 and 0.4 <= second < 2.0


# ---------------------------------------------------------------------------------------------
# persistent faults: one line naming the file, the status and what to do


def test_persistent_5xx_on_a_download_ends_with_one_line(hub: Any, tmp_path: Path) -> None:
    hub.drop(REPO_ID, MODEL, after_bytes=50_000)
    hub.fail(REPO_ID, MODEL, 503, method="GET", after_requests=1)  # then 503 for good
    with pytest.raises(WeightsError) as info:
        fetch(hub, tmp_path)
    assert info.value.message == (f"the hub at {hub.url} answered HTTP 503 for "
                                  f"{REPO_ID}/{MODEL} 3 times in a row")
    assert info.value.exit_code == 2
    assert "re-run later (partial downloads resume)" in (info.value.hint or "")
    assert len(file_requests(hub, "GET")) == 4  # the drop, then 1 try + 2 retries
    (partial,) = (tmp_path / REPO_ID).glob(f"{MODEL}.*.incomplete")
    assert partial.stat().st_size == 50_000
    assert not (tmp_path / REPO_ID / MODEL).exists()
    hub.faults.clear()
    report = fetch(hub, tmp_path)  # the next run continues the partial file
    assert file_requests(hub, "GET")[-1].headers.get("range") == "bytes=50000-"
    assert outcome(report, MODEL).detail.startswith("resumed at 50.0 kB")
    assert not report.failed and (tmp_path / REPO_ID / MODEL).read_bytes() == data(MODEL)


def test_persistent_5xx_on_the_listing_ends_with_one_line(hub: Any, tmp_path: Path) -> None:
    hub.fail_listing(REPO_ID, 500)
    with pytest.raises(weights.HubUnreachable) as info:
        fetch(hub, tmp_path)
    assert info.value.message == (f"the hub at {hub.url} answered HTTP 500 for the file list "
                                  f"of {REPO_ID} 3 times in a row: 2 file(s) missing: "
                                  f"{REPO_ID}/{MODEL}, {REPO_ID}/{CONFIG}")
    assert info.value.exit_code == 2 and "HF_ENDPOINT" in (info.value.hint or "")
    assert len(listings(hub)) == 3 and not file_requests(hub, "HEAD")


def test_a_failing_listing_still_checks_what_is_on_disk(hub: Any, tmp_path: Path) -> None:
    fetch(hub, tmp_path)
    hub.fail_listing(REPO_ID, 503)  # as with the network down: what is there is checked
    report = fetch(hub, tmp_path)
    assert {o.status for o in report.outcomes} == {"present"}
    assert report.notes[-1].startswith(f"the hub at {hub.url} answered HTTP 503 for the file "
                                       f"list of {REPO_ID} 3 times in a row: files checked")


def test_persistent_429_on_the_access_check_ends_with_one_line(hub: Any,
                                                                tmp_path: Path) -> None:
    hub.fail(REPO_ID, CONFIG, 429, method="HEAD", retry_after="0")
    with pytest.raises(WeightsError) as info:
        fetch(hub, tmp_path)
    assert info.value.message == (f"the hub at {hub.url} answered HTTP 429 (too many requests) "
                                  f"for {REPO_ID}/{CONFIG} 3 times in a row")
    assert "wait a few minutes and re-run" in (info.value.hint or "")
    assert not file_requests(hub, "GET") and not file_requests(hub, "GET", CONFIG)


def test_other_4xx_are_not_retried(hub: Any, tmp_path: Path) -> None:
    hub.fail(REPO_ID, MODEL, 404, error_code="EntryNotFound", message="Entry not found",
             method="GET")
    with pytest.raises(WeightsError, match=f"file {MODEL} not found in repo {REPO_ID}"):
        fetch(hub, tmp_path)
    assert len(file_requests(hub, "GET")) == 1
    hub.faults.clear()
    hub.fail_listing(REPO_ID, 400)
    with pytest.raises(WeightsError, match=f"the hub answered HTTP 400 for {REPO_ID}"):
        fetch(hub, tmp_path)
    assert len(listings(hub)) == 2  # one per run


# ---------------------------------------------------------------------------------------------
# verification against the hub's hashes


def test_git_file_not_matching_its_blob_id_is_rejected(hub: Any, tmp_path: Path) -> None:
    hub.list_wrong_blob_id(REPO_ID, CONFIG)
    report = fetch(hub, tmp_path)
    (failed,) = report.failed
    assert failed.file.path == CONFIG and failed.detail == "git_sha1 mismatch after 2 attempt(s)"
    assert not (tmp_path / REPO_ID / CONFIG).exists()
    assert not list(tmp_path.rglob("*.incomplete"))
    assert outcome(report, MODEL).status == "downloaded"
    with pytest.raises(weights.FetchIncomplete) as info:
        report.raise_for_failures()
    assert info.value.message == ("1 file(s) failed verification and were deleted: "
                                  f"{REPO_ID}/{CONFIG} (git_sha1 mismatch after 2 attempt(s))")


def test_a_corrupted_git_file_on_the_wire_is_downloaded_again(hub: Any, tmp_path: Path) -> None:
    hub.wrong_body(REPO_ID, CONFIG, times=1)
    report = fetch(hub, tmp_path)
    assert len(file_requests(hub, "GET", CONFIG)) == 2
    assert_complete_and_verified(report, tmp_path)


def test_a_file_listed_without_a_hash_is_unverified(hub: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    hub.list_without_hash(REPO_ID, CONFIG)
    report = fetch(hub, tmp_path)
    config = outcome(report, CONFIG)
    assert config.status == "unverified" and config.detail == "the hub lists no hash for it"
    assert config.file.sha256 is None and config.file.git_sha1 is None
    assert outcome(report, MODEL).status == "downloaded" and not report.failed
    weights_console.print_report(report)
    summary = capsys.readouterr().out
    assert "1 downloaded" in summary and "1 unverified" in summary
    assert f"unverified  {REPO_ID}/{CONFIG}" in summary
    again = fetch(hub, tmp_path)  # and still on the next run: nothing vouches for it
    assert outcome(again, CONFIG).status == "unverified"


@pytest.mark.parametrize("corrupt", [False, True])
def test_blob_id_is_checked_when_the_size_is_unknown(hub: Any, tmp_path: Path,
                                                     corrupt: bool) -> None:
    # The blob id hashes "blob <size>\0" first: without a listed size it is checked afterwards.
    oid = fakehub.git_blob_sha1(data(CONFIG) + (b"!" if corrupt else b""))
    dest = tmp_path / CONFIG
    url = f"{hub.url}/{REPO_ID}/resolve/main/{CONFIG}"
    expected = Expected(git_sha1=oid)
    if corrupt:
        with pytest.raises(HashMismatch):
            download.download(url, dest, expected=expected, headers={}, progress=no_progress(
                CONFIG, None), retry=NO_WAIT)
        assert not dest.exists() and not list(tmp_path.glob("*.incomplete"))
    else:
        digests = download.download(url, dest, expected=expected, headers={},
                                    progress=no_progress(CONFIG, None), retry=NO_WAIT)
        assert digests["git_sha1"] == oid and dest.read_bytes() == data(CONFIG)
