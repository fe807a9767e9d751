"""A recording stand-in for the Hugging Face Hub API, served on 127.0.0.1 for upload tests.

It answers the endpoints the real ``huggingface_hub`` client calls when it pushes a folder
(``HfApi.create_repo``, ``create_branch``, ``upload_folder`` -> validate-yaml, preupload, commit;
``whoami`` for a token check; the client's once-a-day fetch of the agent-harness registry) and records
every request (method, path, query, headers, body), so a test can assert what the Hub would have
received. Preupload answers that every file is "regular", so the client sends each file base64-encoded
inside the NDJSON commit instead of going through LFS or Xet storage. Unknown requests get a 404 and
are kept in ``unknown`` for debugging.

    with FakeHub(token="hf_test") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        ...
        hub.commits[0].files  # {path_in_repo: bytes}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
REVISION = r"(?P<revision>[^/?]+)"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class RecordedCommit:
    """One NDJSON commit as the Hub received it, with the decoded file contents."""

    repo_id: str
    revision: str
    create_pr: bool
    header: dict
    files: dict[str, bytes] = field(default_factory=dict)
    oid: str = ""


@dataclass
class FakeRepo:
    private: bool
    branches: set[str] = field(default_factory=lambda: {"main"})
    pull_requests: int = 0


class FakeHub:
    """A threaded HTTP server on a free port of 127.0.0.1 that plays the Hub API and records requests."""

    def __init__(self, token: str = "hf_fake_token", user: str = "tester"):
        self.token = token
        self.user = user
        self.requests: list[RecordedRequest] = []
        self.unknown: list[RecordedRequest] = []
        self.commits: list[RecordedCommit] = []
        self.repos: dict[str, FakeRepo] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ routing
    def routes(self):
        """(method, path regex, handler) triples; handlers return (status, json-able body)."""
        return [
            ("GET", r"/api/agent-harnesses", self._agent_harnesses),
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", rf"/api/models/{REPO}/branch/{REVISION}", self._create_branch),
            ("POST", rf"/api/models/{REPO}/preupload/{REVISION}", self._preupload),
            ("POST", rf"/api/models/{REPO}/commit/{REVISION}", self._commit),
        ]

    def handle(self, request: RecordedRequest) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(request)
            for method, pattern, handler in self.routes():
                match = re.fullmatch(pattern, request.path)
                if match and method == request.method:
                    needs_auth = handler not in (self._validate_yaml, self._agent_harnesses)
                    if needs_auth and not self._authorised(request):
                        return 401, {"error": "Invalid credentials in Authorization header"}
                    params = {key: unquote(value) for key, value in match.groupdict().items()}
                    return handler(request, **params)
            self.unknown.append(request)
            return 404, {"error": f"fake hub: no route for {request.method} {request.path}"}

    def _authorised(self, request: RecordedRequest) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    # ------------------------------------------------------------------ endpoints
    def _agent_harnesses(self, request):
        # huggingface_hub fetches this registry to tag its user agent; an empty one detects nothing.
        return 200, {"standardEnvVars": [], "harnesses": {}}

    def _whoami(self, request):
        return 200, {"type": "user", "name": self.user, "auth": {"accessToken": {"role": "write"}}}

    def _validate_yaml(self, request):
        return 200, {"errors": [], "warnings": []}

    def _create_repo(self, request):
        payload = request.json()
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
        self.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def _create_branch(self, request, repo, revision):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        if revision in self.repos[repo].branches:
            return 409, {"error": "Reference already exists"}
        self.repos[repo].branches.add(revision)
        return 200, {}

    def _preupload(self, request, repo, revision):
        if repo not in self.repos or revision not in self.repos[repo].branches:
            return 404, {"error": f"Repository or revision not found: {repo}@{revision}"}
        files = [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for item in request.json()["files"]
        ]
        return 200, {"files": files}

    def _commit(self, request, repo, revision):
        if repo not in self.repos or revision not in self.repos[repo].branches:
            return 404, {"error": f"Repository or revision not found: {repo}@{revision}"}
        create_pr = request.query.get("create_pr") == ["1"]
        commit = parse_ndjson_commit(repo, revision, create_pr, request.body, serial=len(self.commits))
        self.commits.append(commit)
        answer = {"commitUrl": f"{self.endpoint}/{repo}/commit/{commit.oid}", "commitOid": commit.oid,
                  "success": True, "pullRequestUrl": None}
        if create_pr:
            self.repos[repo].pull_requests += 1
            answer["pullRequestUrl"] = f"{self.endpoint}/{repo}/discussions/{self.repos[repo].pull_requests}"
        return 200, answer


def parse_ndjson_commit(repo_id: str, revision: str, create_pr: bool, body: bytes, serial: int = 0) -> RecordedCommit:
    """Decode the client's NDJSON commit: a header line, then one line per file (base64 content)."""
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    header = next(line["value"] for line in lines if line["key"] == "header")
    commit = RecordedCommit(repo_id, revision, create_pr, header, oid=hashlib.sha1(b"%d" % serial + body).hexdigest())
    for line in lines:
        if line["key"] == "file":
            value = line["value"]
            assert value["encoding"] == "base64", value
            commit.files[value["path"]] = base64.b64decode(value["content"])
        elif line["key"] != "header":
            raise ValueError(f"fake hub: unsupported commit operation {line['key']!r}")
    return commit


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            url = urlsplit(self.path)
            request = RecordedRequest(
                method=self.command, path=url.path, query=parse_qs(url.query),
                headers={key.lower(): value for key, value in self.headers.items()}, body=self._read_body(),
            )
            status, answer = hub.handle(request)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _read_chunked(self) -> bytes:
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            self.rfile.readline()  # CRLF after the last, empty chunk
            return b"".join(chunks)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format, *args):  # keep test output quiet; requests are recorded instead
            pass

    return Handler
