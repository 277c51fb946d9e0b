"""A small fake of Kaggle's API, for driving the real `kaggle` client (2.2.x with kagglesdk) in tests.

With `KAGGLE_API_ENVIRONMENT=LOCALHOST` the client sends every call as `POST
http://localhost/api/v1/<package>.<Service>/<Method>` with a JSON body (kagglesdk's kaggle_http_client.py
and kaggle_env.py; the port is fixed at 80). The answers below have the shapes kagglesdk's types read
(their `_fields` tables: camelCase names, enums by name). Besides the API, the fake serves the three
plain URLs its answers point to: blob uploads (`PUT /upload/<token>`), the competition's zip
(`GET /files/<slug>.zip`, where DownloadDataFiles redirects) and kernel output files (`GET /output/...`).

The server binds 127.0.0.1 only, answers each connection within a socket timeout, shuts itself down
after `lifetime_seconds`, and records every request (method, path, Host header, peer, JSON body) so a
test can assert what the client sent.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/api/v1/"
SITE = "https://www.kaggle.com"


@dataclass
class Recorded:
    method: str
    path: str
    host: str
    peer: str
    body: dict | None
    size: int

    @property
    def call(self) -> str:
        """`Service/Method` for API calls (e.g. "kernels.KernelsApiService/SaveKernel"), else the path."""
        return self.path[len(API):] if self.path.startswith(API) else self.path


@dataclass
class Failure:
    """An error answer: HTTP `status`, with Kaggle's JSON body (`{"code", "message"}`) or a plain-text one.
    `http_status` differs from `status` for a JSON body that carries its code with HTTP 200."""

    status: int
    message: str = ""
    json_body: bool = True
    http_status: int | None = None
    times: int = 1_000_000


@dataclass
class FakeKaggle:
    """The fake's state: who is signed in, what exists, what happens next. Tests change it freely."""

    username: str = "someone"
    tokens: tuple[str, ...] = ("KGAT_fake-token-for-tests",)
    # Competitions the user entered (slug, title); `joined` are those whose rules the user accepted.
    entered: list[tuple[str, str]] = field(default_factory=list)
    joined: set[str] = field(default_factory=set)
    competition_zip: bytes = b""
    datasets: dict[str, list[str]] = field(default_factory=dict)  # slug -> statuses still to answer
    descriptions: dict[str, str] = field(default_factory=dict)  # slug -> its latest version's description
    ready_after: int = 1  # "blobs_received" answers before "ready"
    kernel_versions: dict[str, int] = field(default_factory=dict)
    kernel_states: list[str] = field(default_factory=lambda: ["RUNNING", "COMPLETE"])
    kernel_failure: str = ""
    output_files: dict[str, bytes] = field(default_factory=dict)
    submissions: list[dict] = field(default_factory=list)
    scoring: list[str] = field(default_factory=lambda: ["PENDING", "COMPLETE"])
    public_score: str = "0.61234"
    scoring_error: str = ""
    failures: dict[str, Failure] = field(default_factory=dict)  # "Service/Method" or path -> answer
    requests: list[Recorded] = field(default_factory=list)
    uploads: dict[str, int] = field(default_factory=dict)

    def calls(self, suffix: str = "") -> list[Recorded]:
        """Recorded requests whose call ends with `suffix` (all of them for "")."""
        return [request for request in self.requests if request.call.endswith(suffix)]

    def bodies(self, method: str) -> list[dict]:
        return [request.body for request in self.calls("/" + method)]

    # ------------------------------------------------------------------ answers

    def answer(self, request: Recorded, authorized: bool) -> tuple[int, dict | bytes, dict]:
        failure = self.failures.get(request.call)
        if failure and failure.times > 0:
            failure.times -= 1
            return self.error(failure)
        if request.path.startswith("/upload/"):
            self.uploads[request.path.rsplit("/", 1)[-1]] = request.size
            return 200, {}, {}
        if request.path.startswith("/files/"):
            return 200, self.competition_zip, {"Content-Type": "application/zip"}
        if request.path.startswith("/output/"):
            name = request.path[len("/output/"):]
            return (200, self.output_files[name], {"Content-Type": "application/octet-stream"}) \
                if name in self.output_files else self.error(Failure(404, json_body=False))
        if not request.path.startswith(API):
            return self.error(Failure(404, json_body=False))
        method = request.call.rsplit("/", 1)[-1]
        if method == "IntrospectToken":
            token = (request.body or {}).get("token")
            return 200, ({"active": True, "username": self.username} if token in self.tokens else {"active": False}), {}
        if not authorized:
            return self.error(Failure(401, "Unauthenticated", json_body=False))
        handler = getattr(self, "on_" + method, None)
        if handler is None:
            return self.error(Failure(404, f"no fake for {method}"))
        return handler(request.body or {})

    @staticmethod
    def error(failure: Failure) -> tuple[int, dict | bytes, dict]:
        status = failure.http_status or failure.status
        if failure.json_body:
            return status, {"code": failure.status, "message": failure.message or "Error"}, {}
        return status, (failure.message or "error").encode(), {"Content-Type": "text/plain"}

    # datasets -----------------------------------------------------------------

    def on_GetDatasetStatus(self, body):
        slug = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if slug not in self.datasets:
            return self.error(Failure(404, "Not found", json_body=False))
        pending = self.datasets[slug]
        return 200, {"status": pending.pop(0) if pending else "READY"}, {}

    def on_StartBlobUpload(self, body):
        token = f"blob-{len(self.calls('/StartBlobUpload')) - 1}"
        return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}, {}

    def on_CreateDataset(self, body):
        slug = f"{body['ownerSlug']}/{body['slug']}"
        self.datasets[slug] = ["BLOBS_RECEIVED"] * self.ready_after
        self.descriptions[slug] = body.get("description") or ""
        return 200, {"ref": slug, "url": f"{SITE}/datasets/{slug}", "status": "ok"}, {}

    def on_CreateDatasetVersion(self, body):
        slug = f"{body['ownerSlug']}/{body['datasetSlug']}"
        self.datasets[slug] = ["BLOBS_RECEIVED"] * self.ready_after
        self.descriptions[slug] = (body.get("body") or {}).get("description") or ""
        return 200, {"ref": slug, "url": f"{SITE}/datasets/{slug}", "status": "ok"}, {}

    def on_GetDatasetMetadata(self, body):
        slug = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if slug not in self.datasets:
            return self.error(Failure(404, "Not found", json_body=False))
        return 200, {"info": {"datasetSlug": body.get("datasetSlug"), "ownerUser": body.get("ownerSlug"),
                              "description": self.descriptions.get(slug, "")}}, {}

    # kernels ------------------------------------------------------------------

    def on_SaveKernel(self, body):
        slug = body["slug"]
        invalid_datasets = [name for name in body.get("datasetDataSources", [])
                            if name not in self.datasets or self.datasets[name]]
        invalid_competitions = [name for name in body.get("competitionDataSources", []) if name not in self.joined]
        version = self.kernel_versions.get(slug, 0) + 1
        self.kernel_versions[slug] = version
        self.kernel_polls = list(self.kernel_states)
        return 200, {"ref": f"/code/{slug}", "url": f"{SITE}/code/{slug}", "versionNumber": version,
                     "invalidDatasetSources": invalid_datasets, "invalidCompetitionSources": invalid_competitions}, {}

    def on_GetKernelSessionStatus(self, body):
        polls = getattr(self, "kernel_polls", list(self.kernel_states))
        state = polls.pop(0) if len(polls) > 1 else polls[0]
        self.kernel_polls = polls
        answer = {"status": state}
        if state == "ERROR" and self.kernel_failure:
            answer["failureMessage"] = self.kernel_failure
        return 200, answer, {}

    def on_ListKernelSessionOutput(self, body):
        files = [{"fileName": name, "url": f"http://localhost/output/{name}"} for name in self.output_files]
        return 200, {"files": files, "log": "[]"}, {}

    # competitions -------------------------------------------------------------

    def on_ListCompetitions(self, body):
        if body.get("group") not in ("COMPETITION_LIST_TAB_ENTERED", None):
            return 200, {"competitions": []}, {}
        return 200, {"competitions": [
            {"id": index + 1, "ref": f"{SITE}/competitions/{slug}", "title": title, "category": "Community",
             "reward": "Kudos", "teamCount": 40, "userHasEntered": True, "deadline": "2026-06-01T23:59:00Z"}
            for index, (slug, title) in enumerate(self.entered)]}, {}

    def on_DownloadDataFiles(self, body):
        slug = body.get("competitionName")
        if slug not in self.joined:
            return self.error(Failure(403, "You must accept this competition's rules before you can download files"))
        return 302, b"", {"Location": f"http://localhost/files/{slug}.zip"}

    def on_CreateCodeSubmission(self, body):
        if body.get("competitionName") not in self.joined:
            return self.error(Failure(403, "You must accept this competition's rules before you can submit"))
        ref = 50_000_000 + len(self.submissions) + 1
        self.submissions.append({"ref": ref, "fileName": body.get("fileName"), "description": body.get(
            "submissionDescription"), "date": "2026-05-20T10:00:00Z", "states": list(self.scoring)})
        return 200, {"message": "Your submission was successfully saved", "ref": ref}, {}

    def on_GetSubmissionLimits(self, body):
        return 200, {"numToday": len(self.submissions), "numTotal": len(self.submissions),
                     "numAllowedNow": 5 - len(self.submissions)}, {}

    def submission_answer(self, submission, advance: bool) -> dict:
        states = submission["states"]
        state = (states.pop(0) if len(states) > 1 else states[0]) if advance else states[0]
        answer = {key: submission[key] for key in ("ref", "fileName", "description", "date")}
        answer["status"] = state
        if state == "COMPLETE":
            answer.update(publicScore=self.public_score, privateScore="")
        if state == "ERROR":
            answer["errorDescription"] = self.scoring_error
        return answer

    def on_ListSubmissions(self, body):
        return 200, {"submissions": [self.submission_answer(submission, True)
                                     for submission in reversed(self.submissions)]}, {}

    def on_GetSubmission(self, body):
        for submission in self.submissions:
            if submission["ref"] == int(body.get("ref", 0)):
                return 200, self.submission_answer(submission, False), {}
        return self.error(Failure(404, "Submission not found"))


class Handler(BaseHTTPRequestHandler):
    timeout = 20  # seconds a connection may stay silent
    fake: FakeKaggle
    lock: threading.Lock

    def log_message(self, *arguments):  # keep the test output clean
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw and self.path.startswith(API) else None
        except ValueError:
            body = None
        request = Recorded(self.command, self.path.split("?")[0], self.headers.get("Host", ""), self.client_address[0],
                           body, len(raw))
        with self.lock:
            self.fake.requests.append(request)
            status, answer, headers = self.fake.answer(request, bool(self.headers.get("Authorization")))
        payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = handle_any


class FakeKaggleServer:
    """Serve a FakeKaggle on 127.0.0.1:`port` in a thread; a context manager that always shuts it down."""

    def __init__(self, fake: FakeKaggle, port: int = 80, lifetime_seconds: float = 600):
        handler = type("BoundHandler", (Handler,), {"fake": fake, "lock": threading.Lock()})
        self.fake = fake
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.deadline = threading.Timer(lifetime_seconds, self.server.shutdown)
        self.deadline.daemon = True

    def __enter__(self) -> FakeKaggleServer:
        self.thread.start()
        self.deadline.start()
        return self

    def __exit__(self, *exception):
        self.deadline.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
