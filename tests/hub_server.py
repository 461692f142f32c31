"""A Hub-compatible HTTP server on 127.0.0.1, so push/download code is tested with the real client, offline.

Why a server and not mocks: the point of the tests is that `huggingface_hub`'s own
`create_repo`, `upload_folder`/`create_commit`, `snapshot_download`/`hf_hub_download`
(and transformers/peft calling them) work against what we write. Mocking the client
would test our assumptions about it instead.

Endpoints implemented (what huggingface_hub 2.4, transformers 5.24 and peft 0.21 call):

- ``POST /api/repos/create``                                  create_repo (409 if it exists)
- ``POST /api/validate-yaml``                                 create_commit, when README.md is committed
- ``POST /api/{type}s/{ns}/{name}/preupload/{rev}``           every file answered ``uploadMode: "regular"``
- ``POST /api/{type}s/{ns}/{name}/commit/{rev}``              NDJSON: header, ``file`` (base64), deletions
- ``GET  /api/{type}s/{ns}/{name}[/revision/{rev}]``          repo_info/model_info (snapshot_download's first call)
- ``GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]``       list_repo_tree (snapshot_download's file list)
- ``GET|HEAD /[{type}s/]{ns}/{name}/resolve/{rev}/{path}``    hf_hub_download (HEAD for metadata, then GET)

Errors carry the ``X-Error-Code`` header the client maps to its exceptions
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Pointing the client at it (found by reading huggingface_hub 2.4; ``HF_ENDPOINT`` is read
once, at import, into ``huggingface_hub.constants``):

- ``HfApi(endpoint=...)`` works for API calls, but ``hf_hub_download`` without
  ``endpoint=`` (transformers' ``from_pretrained``, peft) formats
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` at call time, and ``HfApi()`` without an
  endpoint reads ``constants.ENDPOINT`` when constructed. So `FakeHub.activate` patches
  both constants (and ``HF_URL_HOSTS``) with pytest's monkeypatch.
- The module-level functions (``huggingface_hub.file_exists``, ``create_repo``, ...) are
  bound methods of ``huggingface_hub.hf_api.api``, an ``HfApi()`` built at import with
  the default endpoint; peft's ``save_pretrained`` calls ``file_exists`` on the base id.
  Its ``endpoint`` attribute is patched too.
- transformers caches ONE ``HfApi`` (``transformers.utils.hub._hf_api``) that
  ``Trainer.push_to_hub``/``init_hf_repo`` use; it is reset so it is rebuilt with the
  patched endpoint.
- ``upload_folder`` takes a streamed xet pipeline when ``hf_xet`` is installed; with
  every file answered ``regular`` it still ends in the same ``/commit`` call, but
  ``activate(disable_xet=True)`` (the default) sets ``constants.HF_HUB_DISABLE_XET`` so
  the plain single-commit path is used and no xet session is opened.
- The cache (``constants.HF_HUB_CACHE``) and token files are redirected to a temporary
  folder, and ``HF_TOKEN`` removed, so a developer's real token is never sent here and
  their cache is never touched.

Repositories live in memory (`FakeHub.repos`), with every commit's snapshot, so tests
can inspect exactly which files were pushed. Requests' ``Authorization`` headers are
recorded in `FakeHub.auth_headers` so a test can prove that a token was really sent
(before asserting it is absent from cards, logs and errors).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_BRANCH = "main"
REPO_TYPES = ("model", "dataset", "space")


def git_blob_oid(data: bytes) -> str:
    """The git SHA-1 the client compares with its own to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    private: bool = False
    commits: list[Commit] = field(default_factory=list)

    @property
    def files(self) -> dict[str, bytes]:
        """Files at the head of the default branch."""
        return dict(self.commits[-1].files) if self.commits else {}

    def snapshot(self, revision: str) -> Commit | None:
        if revision == DEFAULT_BRANCH:
            return self.commits[-1] if self.commits else Commit(oid=_initial_oid(self.repo_id), message="", files={})
        for commit in self.commits:
            if commit.oid == revision:
                return commit
        if revision == _initial_oid(self.repo_id):
            return Commit(oid=revision, message="", files={})
        return None


def _initial_oid(repo_id: str) -> str:
    return hashlib.sha1(f"init:{repo_id}".encode()).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """The server plus its in-memory repositories. Use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.auth_headers: list[str] = []
        # Namespaces where creating or writing a repo is refused with 403, as the Hub does for a
        # token without write access there (lets tests check the error a user sees).
        self.forbidden_namespaces: set[str] = set()
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def activate(self, monkeypatch, cache_dir, disable_xet: bool = True) -> None:
        """Point huggingface_hub, transformers and peft at this server for the rest of the test."""
        import huggingface_hub.constants as constants

        monkeypatch.setenv("HF_ENDPOINT", self.endpoint)  # for subprocesses started by the test
        monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(self.endpoint).hostname})
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache_dir / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(cache_dir / "stored_tokens"))
        if disable_xet:
            monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        import huggingface_hub.hf_api as hf_api

        monkeypatch.setattr(hf_api.api, "endpoint", self.endpoint)  # behind huggingface_hub.file_exists & co.
        try:
            import transformers.utils.hub as transformers_hub

            monkeypatch.setattr(transformers_hub, "_hf_api", None)
        except (ImportError, AttributeError):  # pragma: no cover - other transformers versions
            pass

    # ------------------------------------------------------------------ inspection
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        return self.repo(repo_id, repo_type).files

    # ------------------------------------------------------------------ the Hub's behaviour
    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _get_snapshot(self, repo: Repo, revision: str) -> Commit:
        commit = repo.snapshot(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def create_repo(self, payload: dict) -> tuple[int, dict]:
        repo_type = payload.get("type") or "model"
        name, organization = payload["name"], payload.get("organization")
        repo_id = f"{organization}/{name}" if organization else f"user/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if repo_id.split("/")[0] in self.forbidden_namespaces:
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace")
        url = self._repo_url(repo_type, repo_id)
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return 409, {"error": "You already created this model repo", "url": url}
            self.repos[(repo_type, repo_id)] = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo_id}"

    def commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> dict:
        repo = self._get_repo(repo_type, repo_id)
        if repo_id.split("/")[0] in self.forbidden_namespaces:
            raise HubError(403, "You don't have the rights to write to this repository")
        if unquote(revision) != DEFAULT_BRANCH:
            raise HubError(400, "This test Hub only commits to the main branch.")
        header, files, deleted = {}, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append((key, value["path"]))
            else:  # lfsFile / copies: every file was answered "regular", so these are a client surprise
                raise HubError(400, f"Unsupported commit operation {key!r}: this test Hub stores regular files only.")
        with self.lock:
            current = repo.files
            for key, path in deleted:
                if key == "deletedFile":
                    current.pop(path, None)
                else:
                    prefix = path.rstrip("/") + "/"
                    current = {p: d for p, d in current.items() if not p.startswith(prefix)}
            current.update(files)
            parent = repo.commits[-1].oid if repo.commits else _initial_oid(repo_id)
            oid = hashlib.sha1(
                parent.encode() + json.dumps(header, sort_keys=True).encode() + b"".join(
                    p.encode() + git_blob_oid(d).encode() for p, d in sorted(current.items())
                )
            ).hexdigest()
            repo.commits.append(Commit(oid=oid, message=header.get("summary", ""), files=current))
        return {
            "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{oid}",
            "commitOid": oid,
            "pullRequestUrl": None,
            "success": True,
        }

    def preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> dict:
        repo = self._get_repo(repo_type, repo_id)
        existing = repo.files
        return {
            "files": [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing[f["path"]]) if f["path"] in existing else None,
                }
                for f in payload.get("files", [])
            ],
            "commitOid": repo.commits[-1].oid if repo.commits else None,
        }

    def repo_info(self, repo_type: str, repo_id: str, revision: str) -> dict:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_snapshot(repo, revision)
        info = {
            "id": repo_id,
            "_id": repo_id,
            "sha": commit.oid,
            "private": repo.private,
            "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(commit.files.items())],
            "tags": [],
        }
        card = commit.files.get("README.md")
        if card is not None:
            meta = _front_matter(card.decode("utf-8", "replace"))
            if isinstance(meta, dict):
                info["cardData"] = meta
                info["tags"] = list(meta.get("tags") or [])
                for key in ("library_name", "pipeline_tag"):
                    if key in meta:
                        info[key] = meta[key]
        return info

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict]:
        commit = self._get_snapshot(self._get_repo(repo_type, repo_id), revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        entries, folders = [], set()
        for p, data in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_oid(data)})
        entries += [{"type": "directory", "path": f, "size": 0, "oid": git_blob_oid(f.encode())} for f in sorted(folders)]
        return entries

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> tuple[bytes, str, str]:
        commit = self._get_snapshot(self._get_repo(repo_type, repo_id), revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return data, git_blob_oid(data), commit.oid


def _front_matter(text: str):
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        raise ValueError("The YAML header of README.md is not closed by '---'.")
    return yaml.safe_load(text[3:end])


def _split_repo(parts: list[str]) -> tuple[str, str, list[str]]:
    """['models', ns, name, ...rest] -> (repo_type, repo_id, rest)."""
    if not parts or not parts[0].endswith("s") or parts[0][:-1] not in REPO_TYPES or len(parts) < 3:
        raise HubError(404, "Unknown API route")
    return parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake_hub: FakeHub

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload).encode())

    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers)

    def _dispatch(self, method: str) -> None:
        hub = self.fake_hub
        url = urlsplit(self.path)
        with hub.lock:
            hub.requests.append((method, url.path))
            if self.headers.get("Authorization"):
                hub.auth_headers.append(self.headers["Authorization"])
        body = self._body() if method == "POST" else b""
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        try:
            if parts[:1] == ["api"]:
                self._api(method, parts[1:], query, body)
            elif "resolve" in parts and method in ("GET", "HEAD"):
                self._resolve(parts)
            else:
                raise HubError(404, f"No route for {method} {url.path}")
        except HubError as err:
            self._error(err)
        except (ValueError, KeyError, yaml.YAMLError) as err:
            self._error(HubError(400, f"Bad request: {err}"))

    def _api(self, method: str, parts: list[str], query: dict, body: bytes) -> None:
        hub = self.fake_hub
        if method == "POST" and parts == ["repos", "create"]:
            status, payload = hub.create_repo(json.loads(body))
            return self._json(status, payload)
        if method == "POST" and parts == ["validate-yaml"]:
            content = json.loads(body).get("content", "")
            try:
                meta = _front_matter(content)
            except (ValueError, yaml.YAMLError) as err:
                return self._json(400, {"errors": [{"message": str(err)}], "warnings": []})
            if meta is not None and not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
            return self._json(200, {"errors": [], "warnings": []})
        repo_type, repo_id, rest = _split_repo(parts)
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._json(200, hub.preupload(repo_type, repo_id, rest[1], json.loads(body)))
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._json(200, hub.commit(repo_type, repo_id, rest[1], body))
        if method == "GET" and not rest:
            return self._json(200, hub.repo_info(repo_type, repo_id, DEFAULT_BRANCH))
        if method == "GET" and len(rest) == 2 and rest[0] == "revision":
            return self._json(200, hub.repo_info(repo_type, repo_id, rest[1]))
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._json(200, hub.tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), recursive))
        raise HubError(404, f"No API route for {method} /api/{'/'.join(parts)}")

    def _resolve(self, parts: list[str]) -> None:
        index = parts.index("resolve")
        head = parts[:index]
        repo_type = "model"
        if len(head) == 3 and head[0].endswith("s") and head[0][:-1] in REPO_TYPES:
            repo_type, head = head[0][:-1], head[1:]
        if len(head) != 2 or len(parts) < index + 3:
            raise HubError(404, "Bad resolve URL", "RepoNotFound")
        data, etag, commit = self.fake_hub.resolve(repo_type, "/".join(head), parts[index + 1], "/".join(parts[index + 2 :]))
        self._send(200, data, {"ETag": f'"{etag}"', "X-Repo-Commit": commit}, "application/octet-stream")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")
