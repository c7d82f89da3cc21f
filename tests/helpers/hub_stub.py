"""A local stand-in for the Hugging Face Hub HTTP API, just wide enough for `peftkit push`.

It answers the requests huggingface_hub 2.4 makes for create_repo, model_info, create_branch and
create_commit (see hf_api.py / _commit_api.py in site-packages):

    POST /api/repos/create                          {"name", "organization", "visibility"?}
    GET  /api/models/{ns}/{name}                    repo info (id, private, sha)
    POST /api/models/{ns}/{name}/branch/{branch}    create a branch
    POST /api/validate-yaml                         README.md metadata check, done by create_commit
    POST /api/models/{ns}/{name}/preupload/{rev}    upload mode per file: always "regular", so file
                                                    bytes travel inline (base64) in the commit and no
                                                    LFS / Xet storage is needed
    POST /api/models/{ns}/{name}/commit/{rev}       NDJSON: a header line, then one line per file

Everything that arrives is recorded (method, path, Authorization header, commits with their files'
bytes) for the tests to inspect. Any other request gets 404 and is recorded too, so a test notices
when huggingface_hub starts calling something new.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = (
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/models/{REPO}$"), "repo_info"),
    ("POST", re.compile(rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
)


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    description: str
    files: dict[str, bytes]


@dataclass
class HubState:
    """What the stub has seen and holds; `expected_token` (if set) is the only token it accepts."""

    expected_token: str | None = None
    card_error: str | None = None  # when set, /api/validate-yaml rejects every README.md with this message
    requests: list[Request] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)  # repo_id -> {"private": bool, "branches": set}
    commits: list[Commit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _StubServer

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        with state.lock:
            state.requests.append(Request(method, path, auth))
        for route_method, pattern, name in ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                if name != "validate_yaml" and not self._authorized(auth):
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                params = {k: unquote(v) for k, v in match.groupdict().items()}
                return getattr(self, f"_{name}")(body, **params)
        self._json(404, {"error": f"stub hub does not implement {method} {path}"})

    def _authorized(self, auth: str | None) -> bool:
        expected = self.server.state.expected_token
        if not auth or not auth.startswith("Bearer "):
            return False
        return expected is None or auth == f"Bearer {expected}"

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _repo_or_404(self, repo: str) -> dict | None:
        info = self.server.state.repos.get(repo)
        if info is None:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return info

    def _create_repo(self, body: bytes) -> None:
        payload = json.loads(body)
        repo = f"{payload['organization']}/{payload['name']}"
        state = self.server.state
        with state.lock:
            if repo in state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": self._url(repo)})
            state.repos[repo] = {"private": payload.get("visibility") == "private", "branches": {"main"}}
        self._json(200, {"url": self._url(repo), "name": repo, "id": repo})

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---", content)
        metadata = yaml.safe_load(match.group(1)) if match else None
        if not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "README.md has no YAML metadata mapping"}]})
        if self.server.state.card_error:
            return self._json(400, {"errors": [{"message": self.server.state.card_error}]})
        self._json(200, {"errors": [], "warnings": []})

    def _repo_info(self, body: bytes, repo: str) -> None:
        info = self._repo_or_404(repo)
        if info is not None:
            self._json(200, {"id": repo, "private": info["private"], "sha": "0" * 40})

    def _create_branch(self, body: bytes, repo: str, rev: str) -> None:
        info = self._repo_or_404(repo)
        if info is None:
            return
        if rev in info["branches"]:
            return self._json(409, {"error": "Reference already exists"})
        info["branches"].add(rev)
        self._json(200, {})

    def _preupload(self, body: bytes, repo: str, rev: str) -> None:
        if self._repo_or_404(repo) is None:
            return
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
        self._json(200, {"files": modes, "commitOid": "0" * 40})

    def _commit(self, body: bytes, repo: str, rev: str) -> None:
        info = self._repo_or_404(repo)
        if info is None:
            return
        if rev not in info["branches"]:
            return self._json(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        unsupported = sorted({line["key"] for line in lines} - {"header", "file"})
        if unsupported:
            return self._json(400, {"error": f"stub hub only accepts inline files, got {unsupported}"})
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {
            line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"
        }
        commit = Commit(repo, rev, header["summary"], header.get("description", ""), files)
        with self.server.state.lock:
            self.server.state.commits.append(commit)
        oid = hashlib.sha1(body).hexdigest()
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{self._url(repo)}/commit/{oid}"})

    def _url(self, repo: str) -> str:
        return f"{self.server.endpoint}/{repo}"


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class HubStub:
    """Context manager: a running stub on a random local port; `.endpoint` is its base URL."""

    def __init__(self, expected_token: str | None = None, card_error: str | None = None):
        self.state = HubState(expected_token=expected_token, card_error=card_error)
        self._server = _StubServer(self.state)
        self.endpoint = self._server.endpoint
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-stub", daemon=True
        )

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
