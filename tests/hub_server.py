"""A loopback server speaking the part of the Hugging Face Hub HTTP API that publishing, downloading and
`datasets.load_dataset` use.

No installable server implements the Hub's upload API, so the tests run `huggingface_hub` and `datasets` against this
one. It keeps repos in memory as commits of whole file sets and records what arrives (file contents, commit messages,
who was authorised), so tests assert on what was really sent. Regular (non-LFS) uploads only: the preupload answer
says so. Dataset repos are read-only: `HubState.add_dataset` puts them there.

Run as a script, it serves Multi30k as the Hub's `bentrevett/multi30k` (built from a local copy) until killed, for
trying the quick start on a machine without ../shared and without the Hub:

    python tests/hub_server.py --serve-multi30k ../shared/data/multi30k --port 8765
    HF_ENDPOINT=http://127.0.0.1:8765 bash scripts/quickstart.sh
"""

import argparse
import base64
import gzip
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"  # what the Hub puts in a new repo


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]
    added: list[str] = field(default_factory=list)


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def commit(self, branch: str, message: str, files: dict[str, bytes], added: list[str]) -> Commit:
        oid = hashlib.sha1(f"{len(self.commits)}:{message}".encode() + b"".join(files.values())).hexdigest()
        self.commits[oid] = Commit(oid, message, files, added)
        self.branches[branch] = oid
        return self.commits[oid]

    def head(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubState:
    """Model repos and dataset repos by id, the accepted token, and a log of (method, path, authorised) for every
    request."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.datasets: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.validated_cards: list[str] = []
        self.lock = threading.Lock()

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> None:
        """A public dataset repo holding `files` (path in the repo -> content) in one commit on main."""
        repo = Repo(private=False)
        repo.commit("main", "initial commit", {".gitattributes": GITATTRIBUTES, **files}, sorted(files))
        self.datasets[repo_id] = repo


# The card of bentrevett/multi30k on the Hub: no `configs`, so `datasets` takes the splits from the file names.
MULTI30K_CARD = b"""---
task_categories:
- translation
language:
- en
- de
size_categories:
- 10K<n<100K
---
# Multi30k

Task 1 of Multi30k: each example is an English image description ("en") and its German translation ("de").
"""


def multi30k_files(folder: Path) -> dict[str, bytes]:
    """bentrevett/multi30k's files built from a local Multi30k task 1 folder ({train,val,test_2016_flickr}.{en,de},
    gzipped or not): train.jsonl, val.jsonl and test.jsonl of flat rows {"en": ..., "de": ...}, and its card."""
    files = {"README.md": MULTI30K_CARD}
    for name, stem in (("train", "train"), ("val", "val"), ("test", "test_2016_flickr")):
        texts = {}
        for lang in ("en", "de"):
            path = folder / f"{stem}.{lang}.gz"
            raw = gzip.decompress(path.read_bytes()) if path.exists() else path.with_suffix("").read_bytes()
            texts[lang] = raw.decode("utf-8").splitlines()
        rows = (json.dumps({"en": en, "de": de}, ensure_ascii=False) for en, de in zip(*texts.values(), strict=True))
        files[f"{name}.jsonl"] = "".join(row + "\n" for row in rows).encode()
    return files


REPO = r"(?P<repo>[^/]+/[^/]+)"
REVISION = r"(?P<revision>[^/]+)"
KIND = r"(?P<kind>models|datasets)"


def file_entry(path: str, content: bytes) -> dict:
    """A file as the Hub's tree and paths-info endpoints describe it."""
    return {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}


def folder_entry(path: str) -> dict:
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}


def tree_entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict]:
    """What the Hub's tree endpoint lists under `folder` ("" for the root): its files and folders, with everything
    below them if `recursive`."""
    prefix = f"{folder}/" if folder else ""
    entries, folders = [], set()
    for name, content in sorted(files.items()):
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        if recursive:
            folders.update(prefix + "/".join(parts[:depth]) for depth in range(1, len(parts)))
            entries.append(file_entry(name, content))
        elif len(parts) == 1:
            entries.append(file_entry(name, content))
        else:
            folders.add(prefix + parts[0])
    return [*(folder_entry(path) for path in sorted(folders)), *entries]


class HubHandler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass made by `serve`

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # --- plumbing -------------------------------------------------------------------------------------------------
    def authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def reply(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str) -> None:
        self.reply(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def route(self, routes: list[tuple[str, object]]) -> None:
        path = unquote(urlparse(self.path).path)
        with self.state.lock:
            self.state.requests.append((self.command, path, self.authorised()))
            for pattern, handler in routes:
                match = re.fullmatch(pattern, path)
                if match:
                    return handler(**match.groupdict())
        self.error(404, "NotFound", f"no route for {self.command} {path}")

    def readable_repo(self, repo_id: str, kind: str | None = None) -> Repo | None:
        repo = (self.state.datasets if kind == "datasets" else self.state.repos).get(repo_id)
        if repo is None or (repo.private and not self.authorised()):
            self.error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        return repo

    def readable_commit(self, repo_id: str, revision: str, kind: str | None) -> tuple[Repo | None, Commit | None]:
        """The repo (a model's, or a dataset's for `kind` "datasets") and its commit at `revision`, or (None, None)
        after answering 404."""
        repo = self.readable_repo(repo_id, kind)
        if repo is None:
            return None, None
        commit = repo.head(revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    def writable_repo(self, repo_id: str) -> Repo | None:
        if not self.authorised():
            self.error(401, "Unauthorized", "Invalid credentials")
            return None
        return self.readable_repo(repo_id)

    # --- endpoints ------------------------------------------------------------------------------------------------
    def create_repo(self) -> None:
        if not self.authorised():
            return self.error(401, "Unauthorized", "Invalid credentials")
        payload = json.loads(self.body())
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        if repo_id in self.state.repos:
            return self.reply(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        repo.commit("main", "initial commit", {".gitattributes": GITATTRIBUTES}, [])
        self.state.repos[repo_id] = repo
        self.reply(200, {"url": url, "name": repo_id})

    def validate_yaml(self) -> None:
        self.state.validated_cards.append(json.loads(self.body())["content"])
        self.reply(200, {"errors": [], "warnings": []})

    def preupload(self, repo: str, revision: str) -> None:
        if self.writable_repo(repo) is None:
            return
        files = json.loads(self.body())["files"]
        self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def commit(self, repo: str, revision: str) -> None:
        target = self.writable_repo(repo)
        if target is None:
            return
        parent = target.head(revision)
        if parent is None:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files, added, message = dict(parent.files), [], ""
        for line in self.body().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                message = item["value"]["summary"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                added.append(item["value"]["path"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
            else:
                return self.error(400, "BadRequest", f"unsupported commit operation {item['key']}")
        new = target.commit(revision, message, files, added)
        url = f"http://{self.headers['Host']}/{repo}/commit/{new.oid}"
        self.reply(200, {"commitUrl": url, "commitOid": new.oid, "pullRequestUrl": None})

    def create_branch(self, repo: str, branch: str) -> None:
        target = self.writable_repo(repo)
        if target is None:
            return
        if branch in target.branches:
            return self.error(409, "BranchExists", f"Reference already exists: {branch}")
        target.branches[branch] = target.branches["main"]
        self.reply(200, {})

    def repo_info(self, kind: str, repo: str, revision: str = "main") -> None:
        target, commit = self.readable_commit(repo, revision, kind)
        if commit is None:
            return
        siblings = [{"rfilename": name} for name in sorted(commit.files)]
        info = {"id": repo, "modelId": repo, "sha": commit.oid, "private": target.private, "siblings": siblings}
        self.reply(200, info)

    def tree(self, kind: str, repo: str, revision: str, path: str | None = None) -> None:
        _, commit = self.readable_commit(repo, revision, kind)
        if commit is None:
            return
        recursive = parse_qs(urlparse(self.path).query).get("recursive", ["False"])[0].lower() in ("true", "1")
        self.reply(200, tree_entries(commit.files, (path or "").strip("/"), recursive))

    def paths_info(self, kind: str, repo: str, revision: str) -> None:
        _, commit = self.readable_commit(repo, revision, kind)
        if commit is None:
            return
        paths = parse_qs(self.body().decode()).get("paths", [])  # a form, as HfApi.get_paths_info posts it
        folders = {entry["path"] for entry in tree_entries(commit.files, "", True) if entry["type"] == "directory"}
        known = [file_entry(p, commit.files[p]) if p in commit.files else folder_entry(p) for p in paths]
        self.reply(200, [entry for entry in known if entry["path"] in commit.files or entry["path"] in folders])

    def resolve(self, repo: str, revision: str, filename: str, kind: str | None = None) -> None:
        _, commit = self.readable_commit(repo, revision, kind)
        if commit is None:
            return
        if filename not in commit.files:
            return self.error(404, "EntryNotFound", f"{filename} does not exist at {revision}")
        content = commit.files[filename]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(content)}"'}
        self.reply(200, content, {"Content-Type": "application/octet-stream", **headers})

    # --- HTTP verbs -----------------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self.route(
            [
                (r"/api/repos/create", self.create_repo),
                (r"/api/validate-yaml", self.validate_yaml),
                (rf"/api/models/{REPO}/preupload/{REVISION}", self.preupload),
                (rf"/api/models/{REPO}/commit/{REVISION}", self.commit),
                (rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", self.create_branch),
                (rf"/api/{KIND}/{REPO}/paths-info/{REVISION}", self.paths_info),
            ]
        )

    def do_GET(self) -> None:
        self.route(
            [
                (rf"/api/{KIND}/{REPO}", self.repo_info),
                (rf"/api/{KIND}/{REPO}/revision/{REVISION}", self.repo_info),
                (rf"/api/{KIND}/{REPO}/tree/{REVISION}(?P<path>/.*)?", self.tree),
                (rf"/(?:(?P<kind>datasets)/)?{REPO}/resolve/{REVISION}/(?P<filename>.+)", self.resolve),
            ]
        )

    do_HEAD = do_GET


def serve(token: str, port: int = 0) -> tuple[ThreadingHTTPServer, HubState]:
    """Start a server on 127.0.0.1 (a free port by default) in a daemon thread; its endpoint is
    `http://127.0.0.1:{server.server_port}`."""
    state = HubState(token)
    handler = type("BoundHubHandler", (HubHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve Multi30k as the Hub's bentrevett/multi30k on 127.0.0.1.")
    parser.add_argument("--serve-multi30k", type=Path, required=True, help="a Multi30k task 1 folder (*.en.gz ...)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    server, state = serve(token="unused", port=args.port)
    state.add_dataset("bentrevett/multi30k", multi30k_files(args.serve_multi30k))
    print(f"serving bentrevett/multi30k: HF_ENDPOINT=http://127.0.0.1:{server.server_port}", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
