"""A local stand-in for the Hugging Face hub, on 127.0.0.1, stdlib only.

Serves the files a test writes under ``root/<org>/<repo>/...`` with the protocol huggingface_hub
2.x speaks (docs/environment.md#hugging-face-hub):

* ``GET /api/models/{repo}[/revision/{rev}]`` -> ``sha`` and ``siblings`` (with ``size``,
  ``blobId`` and ``lfs`` when ``blobs=true``);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...`` -> ``type/path/size/oid``
  (+ ``lfs``);
* ``HEAD/GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` (git blob sha1, or the
  sha256 for LFS files, which also get ``X-Linked-Etag`` / ``X-Linked-Size``), ``Content-Length``
  and HTTP Range (206 + ``Content-Range``; 416 past the end).

Files whose name ends in one of ``lfs_suffixes`` are "LFS" files. With ``cdn_host`` set, resolve
answers LFS files with a 302 to that host (like the real hub's CDN), which serves the bytes.

Fault injection (each with ``times``: how many requests it hits, None = all): drop the connection
after N bytes of a GET, serve a wrong body of the same length, ignore Range (200 + whole file),
answer an HTTP error with the hub's ``X-Error-Code`` / ``X-Error-Message`` headers (on the
listing, the HEAD access check or the GET of a file, optionally with ``Retry-After`` and only
after some requests went through), or gate a repo (401 without a token, 403 with a token that has
not accepted the license). The listing can also misreport a file: no hash at all, or the blob id
of other bytes. Every request is logged (method, path, headers, arrival time).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote, unquote, urlsplit


@dataclass(frozen=True)
class Logged:
    """One request the server received."""

    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class Fault:
    """A misbehaviour for requests to ``repo`` (and ``file``, if set)."""

    repo: str
    file: str | None
    kind: str  # "drop", "wrong", "norange", "status"
    times: int | None = 1
    drop_after: int = 0
    status: int = 500
    error_code: str | None = None
    message: str = ""
    api: bool = False  # also for /api/ requests (repo-level faults)
    listing_only: bool = False  # only for /api/ requests
    method: str | None = None  # only for this HTTP method ("HEAD", "GET")
    retry_after: str | None = None  # the Retry-After header of a "status" fault
    after_requests: int = 0  # let this many matching requests through first

    def matches(self, repo: str, file: str | None, api: bool, method: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.repo != repo or (api and not self.api) or (self.listing_only and not api):
            return False
        if self.method is not None and self.method != method:
            return False
        return self.file is None or self.file == file


@dataclass
class Gate:
    """A gated repo: which bearer tokens have accepted its license."""

    accepted: frozenset[str] = frozenset()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    """The server; use as a context manager. ``url`` is its endpoint (``HF_ENDPOINT``)."""

    root: Path
    lfs_suffixes: tuple[str, ...] = (".pt", ".jit", ".bin", ".safetensors")
    cdn_host: str | None = None
    log: list[Logged] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    gates: dict[str, Gate] = field(default_factory=dict)
    #: What the listing says a file's hash is, instead of the truth: None = no hash at all.
    listed_oids: dict[tuple[str, str], str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- content --------------------------------------------------------------------------

    def write(self, repo: str, path: str, data: bytes) -> Path:
        """Put a file in a repo; returns its path on disk."""
        target = self.root / repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    def commit(self, repo: str) -> str:
        """A commit id that changes when any file of the repo changes."""
        digest = hashlib.sha1(repo.encode())
        for path, data in sorted(self._files(repo).items()):
            digest.update(path.encode() + hashlib.sha256(data).digest())
        return digest.hexdigest()

    def _files(self, repo: str) -> dict[str, bytes]:
        base = self.root / repo
        return {p.relative_to(base).as_posix(): p.read_bytes()
                for p in sorted(base.rglob("*")) if p.is_file()}

    def entry(self, path: str, data: bytes, repo: str | None = None) -> dict[str, object]:
        """The metadata of one file, as the tree API sends it (``listed_oids`` applied)."""
        item: dict[str, object] = {"type": "file", "path": path, "size": len(data),
                                   "oid": git_blob_sha1(data)}
        if repo is not None and (repo, path) in self.listed_oids:
            oid = self.listed_oids[repo, path]
            if oid is None:
                del item["oid"]
            else:
                item["oid"] = oid
            return item  # misreported files are listed as plain git files
        if self.is_lfs(path):
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                           "pointerSize": 134}
        return item

    # -- faults ---------------------------------------------------------------------------

    def drop(self, repo: str, file: str, after_bytes: int, times: int | None = 1) -> None:
        """Close the connection after ``after_bytes`` of the body of a GET."""
        self.faults.append(Fault(repo, file, "drop", times, drop_after=after_bytes))

    def ignore_range(self, repo: str, file: str, times: int | None = None) -> None:
        """Answer Range requests with the whole file and 200, as some proxies do."""
        self.faults.append(Fault(repo, file, "norange", times))

    def wrong_body(self, repo: str, file: str, times: int | None = None) -> None:
        """Serve different bytes of the same length."""
        self.faults.append(Fault(repo, file, "wrong", times))

    def fail(self, repo: str, file: str | None, status: int, *, error_code: str | None = None,
             message: str = "", times: int | None = None, api: bool = False,
             method: str | None = None, retry_after: str | None = None,
             after_requests: int = 0) -> None:
        """Answer ``status`` with the hub's error headers (``api``: also for /api/ calls;
        ``method``: only HEAD, the access check, or only GET, the download; ``retry_after``:
        with that ``Retry-After`` header; ``after_requests``: once that many went through)."""
        self.faults.append(Fault(repo, file, "status", times, status=status,
                                 error_code=error_code, message=message, api=api, method=method,
                                 retry_after=retry_after, after_requests=after_requests))

    def fail_listing(self, repo: str, status: int, *, times: int | None = None,
                     retry_after: str | None = None) -> None:
        """Answer the repo's /api/ listing with ``status`` (its files are served normally)."""
        self.faults.append(Fault(repo, None, "status", times, status=status, api=True,
                                 listing_only=True, retry_after=retry_after))

    def list_without_hash(self, repo: str, file: str) -> None:
        """List ``file`` with its size but no sha256 and no blob id."""
        self.listed_oids[repo, file] = None

    def list_wrong_blob_id(self, repo: str, file: str) -> None:
        """List ``file`` as a git file whose blob id is that of other bytes of the same size,
        so the content served never matches it."""
        data = (self.root / repo / file).read_bytes()
        self.listed_oids[repo, file] = git_blob_sha1(bytes(b ^ 0xFF for b in data))

    def gate(self, repo: str, accepted_tokens: frozenset[str] = frozenset()) -> None:
        """Make ``repo`` gated: files need a token that accepted the license."""
        self.gates[repo] = Gate(accepted_tokens)

    def take_fault(self, repo: str, file: str | None, api: bool, kinds: tuple[str, ...],
                   method: str = "GET") -> Fault | None:
        """The first matching fault that is due; every matching fault still waiting
        (``after_requests``) counts this request, whichever fault hits it."""
        with self._lock:
            due: Fault | None = None
            for fault in self.faults:
                if fault.kind not in kinds or not fault.matches(repo, file, api, method):
                    continue
                if fault.after_requests > 0:
                    fault.after_requests -= 1
                elif due is None:
                    due = fault
            if due is not None and due.times is not None:
                due.times -= 1
            return due

    # -- the log --------------------------------------------------------------------------

    def record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def requests(self, method: str | None = None, contains: str = "") -> list[Logged]:
        """Logged requests, filtered by method and a substring of the path."""
        with self._lock:
            return [r for r in self.log
                    if (method is None or r.method == method) and contains in r.path]


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK stall every response by ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    # -- routing --------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        hub = self.server_hub
        hub.record(Logged(self.command, path, parse_qs(parts.query),
                          {k.lower(): v for k, v in self.headers.items()}))
        segments = path.strip("/").split("/")
        if segments[:2] == ["api", "models"] and len(segments) >= 4:
            self._api(segments[2] + "/" + segments[3], segments[4:], parse_qs(parts.query))
        elif len(segments) >= 5 and segments[2] == "resolve":
            repo = f"{segments[0]}/{segments[1]}"
            self._resolve(repo, segments[3], "/".join(segments[4:]), head=head)
        elif segments[0] == "cdn" and len(segments) >= 4:
            repo = f"{segments[1]}/{segments[2]}"
            self._serve_bytes(repo, "/".join(segments[3:]), head=head, lfs_headers=False)
        else:
            self._error(404, None, "Not Found")

    # -- /api/models ----------------------------------------------------------------------

    def _api(self, repo: str, rest: list[str], query: dict[str, list[str]]) -> None:
        hub = self.server_hub
        fault = hub.take_fault(repo, None, True, ("status",), self.command)
        if fault is not None:
            return self._error(fault.status, fault.error_code, fault.message,
                               retry_after=fault.retry_after)
        if not (hub.root / repo).is_dir():
            return self._error(404, "RepoNotFound", "Repository not found")
        if rest and rest[0] not in ("revision", "tree"):
            return self._error(404, None, "Not Found")
        if len(rest) >= 2 and rest[1] not in ("main", hub.commit(repo)):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        files = hub._files(repo)
        if rest and rest[0] == "tree":
            return self._tree(repo, files, "/".join(rest[2:]), query)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, data in files.items():
            sibling: dict[str, object] = {"rfilename": path}
            if blobs:
                entry = hub.entry(path, data, repo)
                sibling["size"] = len(data)
                if "oid" in entry:
                    sibling["blobId"] = entry["oid"]
                if "lfs" in entry:
                    lfs = dict(entry["lfs"])  # type: ignore[call-overload]
                    sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"],
                                      "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        gated = "manual" if repo in hub.gates else False
        self._json({"id": repo, "modelId": repo, "sha": hub.commit(repo), "private": False,
                    "gated": gated, "siblings": siblings})

    def _tree(self, repo: str, files: dict[str, bytes], under: str,
              query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{under}/" if under else ""
        items: list[dict[str, object]] = []
        folders: set[str] = set()
        for path, data in files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parents = path.split("/")[:-1]
                folders.update("/".join(parents[: i + 1]) for i in range(len(parents)))
            items.append(self.server_hub.entry(path, data, repo))
        dirs = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                for d in sorted(folders) if d.startswith(prefix) and d != under]
        self._json(dirs + items)

    # -- /resolve -------------------------------------------------------------------------

    def _resolve(self, repo: str, revision: str, file: str, *, head: bool) -> None:
        hub = self.server_hub
        fault = hub.take_fault(repo, file, False, ("status",), self.command)
        if fault is not None:
            return self._error(fault.status, fault.error_code, fault.message,
                               retry_after=fault.retry_after)
        if not (hub.root / repo).is_dir():
            return self._error(404, "RepoNotFound", "Repository not found")
        if revision not in ("main", hub.commit(repo)):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if not self._gate_open(repo):
            return
        if not (hub.root / repo / file).is_file():
            return self._error(404, "EntryNotFound", "Entry not found",
                               commit=hub.commit(repo))
        if hub.cdn_host and hub.is_lfs(file):
            data = (hub.root / repo / file).read_bytes()
            self.send_response(302)
            self._file_headers(repo, file, data)
            self.send_header("Location", f"http://{hub.cdn_host}:{hub.port}/cdn/{repo}/"
                             f"{quote(file)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._serve_bytes(repo, file, head=head, lfs_headers=True)

    def _gate_open(self, repo: str) -> bool:
        gate = self.server_hub.gates.get(repo)
        if gate is None:
            return True
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if token in gate.accepted:
            return True
        if not token:
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have "
                        "access to it and be authenticated to access it. Please log in.")
        else:
            self._error(403, "GatedRepo", f"Access to model {repo} is restricted and you are "
                        f"not in the authorized list. Visit https://huggingface.co/{repo} to ask "
                        "for access.")
        return False

    def _file_headers(self, repo: str, file: str, data: bytes) -> None:
        hub = self.server_hub
        self.send_header("X-Repo-Commit", hub.commit(repo))
        if hub.is_lfs(file):
            sha = hashlib.sha256(data).hexdigest()
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
        else:
            self.send_header("ETag", f'"{git_blob_sha1(data)}"')

    def _serve_bytes(self, repo: str, file: str, *, head: bool, lfs_headers: bool) -> None:
        hub = self.server_hub
        target = hub.root / repo / file
        if not target.is_file():
            return self._error(404, "EntryNotFound", "Entry not found")
        data = target.read_bytes()
        start, end = 0, len(data) - 1
        wanted = self.headers.get("Range")
        if wanted and not head and hub.take_fault(repo, file, False, ("norange",)):
            wanted = None
        if wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start = int(first)
            end = int(last) if last else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:end + 1]
        kinds = ("drop", "wrong") if not head else ()
        fault = hub.take_fault(repo, file, False, kinds) if kinds else None
        if fault is not None and fault.kind == "wrong":
            body = bytes(b ^ 0xFF for b in body)
        self.send_response(206 if wanted else 200)
        if lfs_headers:
            self._file_headers(repo, file, data)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if head:
            return
        if fault is not None and fault.kind == "drop":
            self.wfile.write(body[: fault.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # SHUT_RDWR: the client sees a short body
            return
        self.wfile.write(body)

    # -- helpers --------------------------------------------------------------------------

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str,
               commit: str | None = None, retry_after: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
