"""The whole Kaggle loop through the project's commands, driving the real `kaggle` client (from the dev
extras) against a local fake of Kaggle's API (tests/fake_kaggle_api.py).

`KAGGLE_API_ENVIRONMENT=LOCALHOST` makes the client call http://localhost/api/v1/<Service>/<Method> on
port 80 (fixed in kagglesdk's environment table), so these tests need to bind 127.0.0.1:80 and skip,
saying so, where they cannot. Two guards keep everything on this machine: the test process refuses any
connection that is not to 127.0.0.1, and the client's processes get a sitecustomize that does the same
(and refuses to resolve any other host name); every request the fake recorded is checked too.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import textwrap
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_kaggle_api import Failure, FakeKaggle, FakeKaggleServer  # noqa: E402

from voc_pipeline.cli import main  # noqa: E402
from voc_pipeline.kernel import bundle as bundle_module  # noqa: E402
from voc_pipeline.kernel.bundle import KERNEL_SOURCE, notebook_from_percent  # noqa: E402
from voc_pipeline.kernel.client import KaggleCli, find_kaggle_cli  # noqa: E402
from voc_pipeline.kernel.credentials import check_credentials  # noqa: E402

TOKEN = "KGAT_fake-token-for-tests"
THIS_YEAR = "kul-computer-vision-ga-2-2026"
LOCAL_HOSTS = ("127.0.0.1", "::1")

GUARD = '''
"""Test guard, loaded by every Python process of the kaggle client: connect to 127.0.0.1 only."""
import socket

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _check(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        raise OSError("test guard: refused a connection to %r (only 127.0.0.1 is allowed)" % (address,))


def _guarded_connect(self, address):
    _check(self, address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *arguments, **keywords):
    if host not in ("localhost", "127.0.0.1", "::1", None):
        raise socket.gaierror("test guard: refused to resolve %r (only localhost is allowed)" % (host,))
    return [entry for entry in _getaddrinfo(host, *arguments, **keywords) if entry[4][0] == "127.0.0.1"]


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
    _guarded_connect, _guarded_connect_ex, _guarded_getaddrinfo)
'''


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    """This process may connect to 127.0.0.1 only."""
    original = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            raise OSError(f"test guard: refused a connection to {address!r}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A clean HOME and environment for the client: no proxies, no credentials but what a test adds, the
    LOCALHOST API environment, and the guard on its sockets."""
    home = tmp_path / "home"
    home.mkdir()
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    (tmp_path / "tmp").mkdir()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "KAGGLE_USERNAME",
                 "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME", "KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE",
                 "KAGGLE_DATA_PROXY_URL", "KAGGLE_API_V1_TOKEN", "VERBOSE", "VERBOSE_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the client keeps upload state there
    monkeypatch.setenv("PYTHONPATH", str(guard))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    return home


@pytest.fixture
def fake(home):
    """The fake API on 127.0.0.1:80, with this year's competition entered and joined."""
    state = FakeKaggle(entered=[(THIS_YEAR, "KU Leuven Computer Vision GA 2 (2026)")], joined={THIS_YEAR})
    try:
        server = FakeKaggleServer(state, port=80, lifetime_seconds=300)
    except OSError as error:
        pytest.skip(f"port 80 on 127.0.0.1 cannot be bound here ({error}): the real kaggle client calls "
                    f"http://localhost:80 only, in its LOCALHOST environment")
    with server:
        yield state
    for request in state.requests:  # nothing was sent anywhere else, and only as Kaggle's API expects
        assert request.peer == "127.0.0.1" and request.host.split(":")[0] in ("localhost", "127.0.0.1"), request


@pytest.fixture
def token(home, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)


def fake_wheels(destination: Path) -> list[Path]:
    """A stand-in for building wheels (pip takes minutes on this machine): what is uploaded is a file."""
    destination.mkdir(parents=True, exist_ok=True)
    wheel = destination / "voc_pipeline-0.0.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel bytes" * 100)
    return [wheel]


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "build_wheels", fake_wheels)
    return tmp_path / "bundle"


def run(capsys, *arguments) -> tuple[int, str, str]:
    code = main(list(map(str, arguments)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def quick(*arguments) -> list[str]:
    return [*arguments, "--poll", "0.01", "--timeout", "20"]


def zip_of(root: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(root).as_posix())
    return buffer.getvalue()


def test_the_client_used_is_the_real_one_from_the_dev_extras():
    executable = find_kaggle_cli()
    assert executable.parent == Path(sys.executable).parent
    assert "kaggle.cli" in executable.read_text()


# ---------------------------------------------------------------- the competition


def test_without_a_slug_this_years_assignment_2_is_found_and_recorded_in_the_bundle(fake, token, bundle, capsys):
    fake.entered = [("kul-computer-vision-ga-1-2026", "GA 1"), (THIS_YEAR, "GA 2"), ("titanic", "Titanic")]
    code, out, err = run(capsys, "kernel", "build", "--username", "someone", "--output", bundle)
    assert code == 0, err
    assert f"competition: {THIS_YEAR} (the assignment 2 competition you entered" in out
    assert fake.bodies("ListCompetitions")[0]["group"] == "COMPETITION_LIST_TAB_ENTERED"
    metadata = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert metadata["competition_sources"] == [THIS_YEAR]
    # Later commands agree with the bundle: another slug is refused before anything is called.
    calls = len(fake.requests)
    code, _, err = run(capsys, "kernel", "push", "--bundle", bundle, "--competition", "kul-computer-vision-ga-2-2025")
    assert code == 2 and f"was built for {THIS_YEAR}, not kul-computer-vision-ga-2-2025" in err
    assert len(fake.requests) == calls


@pytest.mark.parametrize(("entered", "expected"), [
    ([], "(entered: none): join this year's on kaggle.com, or choose one with --competition SLUG"),
    ([("kul-computer-vision-ga-1-2026", "GA 1"), ("titanic", "T")],
     "(entered: kul-computer-vision-ga-1-2026, titanic): join this year's"),
    ([("kul-computer-vision-ga-2-2025", "GA 2 2025"), (THIS_YEAR, "GA 2 2026")],
     f"several KU Leuven computer vision group assignment 2 competitions (kul-computer-vision-ga-2-2025, {THIS_YEAR}): "
     f"choose one with --competition SLUG"),
])
def test_none_or_several_fitting_competitions_end_in_one_line_naming_the_flag(fake, token, bundle, capsys, entered,
                                                                            expected):
    fake.entered = entered
    code, _, err = run(capsys, "kernel", "build", "--username", "someone", "--output", bundle)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not bundle.exists()


# ---------------------------------------------------------------- the data


def test_data_download_unpacks_checks_and_reuses_a_complete_folder(fake, token, demo_root, tmp_path, capsys):
    fake.competition_zip = zip_of(demo_root)
    target = tmp_path / "data" / "kaggle"
    code, out, err = run(capsys, "data", "download", target)
    assert code == 0, err
    assert f"Downloading {THIS_YEAR}.zip to {target}" in out  # the client's own progress
    assert f"{THIS_YEAR}: 24 train and 8 test images in {target}, layout checked" in out
    assert (target / "train" / "train_set.csv").exists() and not (target / f"{THIS_YEAR}.zip").exists()
    assert fake.bodies("DownloadDataFiles") == [{"competitionName": THIS_YEAR}]
    assert any(request.path == f"/files/{THIS_YEAR}.zip" for request in fake.requests)
    # Complete: reused, nothing downloaded again.
    code, out, _ = run(capsys, "data", "download", target, "--competition", THIS_YEAR)
    assert code == 0 and "reusing it" in out and len(fake.bodies("DownloadDataFiles")) == 1
    # Half-done (no record of a finished download): downloaded again.
    (target / ".kaggle-download.json").unlink()
    code, out, _ = run(capsys, "data", "download", target, "--competition", THIS_YEAR)
    assert code == 0 and len(fake.bodies("DownloadDataFiles")) == 2


def test_a_zip_entry_that_would_leave_the_folder_refuses_the_whole_archive(fake, token, demo_root, tmp_path, capsys):
    buffer = io.BytesIO(zip_of(demo_root))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("../escaped.txt", "outside")
    fake.competition_zip = buffer.getvalue()
    target = tmp_path / "data" / "kaggle"
    code, _, err = run(capsys, "data", "download", target, "--competition", THIS_YEAR)
    assert code == 2 and "its entry '../escaped.txt' is a path that climbs out with '..'" in err
    assert not (tmp_path / "data" / "escaped.txt").exists() and not (target / "train").exists()


def test_a_download_kaggle_refuses_names_the_error_and_the_rules_not_the_hint(fake, token, tmp_path, capsys):
    fake.joined = set()
    code, _, err = run(capsys, "data", "download", tmp_path / "d", "--competition", THIS_YEAR)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "You must accept this competition's rules before you can download files" in err
    assert f"accept the rules of {THIS_YEAR} at https://www.kaggle.com/competitions/{THIS_YEAR}/rules" in err
    assert "You don't have access to this resource" not in err


# ---------------------------------------------------------------- push, status, output, submit


def test_the_whole_loop_with_the_real_client(fake, token, bundle, demo_root, tmp_path, capsys):
    code, out, err = run(capsys, "kernel", "build", "--username", "someone", "--output", bundle,
                         "--competition", THIS_YEAR)
    assert code == 0, err
    code, out, err = run(capsys, *quick("kernel", "push", "--bundle", bundle))
    assert code == 0, err
    print(out, file=sys.stderr)
    assert "Starting upload for file voc_pipeline-0.0.0-py3-none-any.whl" in out
    assert "Upload successful: voc_pipeline-0.0.0-py3-none-any.whl" in out
    assert "Your private Dataset is being created. Please check progress at" in out
    assert out.index("dataset someone/voc-pipeline-wheels: blobs_received") < out.index(
        "dataset someone/voc-pipeline-wheels: ready") < out.index("Kernel version 1 successfully pushed.")
    # Not on Kaggle yet, so there is no content hash to compare: the dataset is created.
    assert [request.call.rsplit("/", 1)[-1] for request in fake.requests if request.path.startswith("/api")
            and "IntrospectToken" not in request.path][:4] == ["GetDatasetStatus", "GetDatasetStatus", "GetDatasetStatus",
                                                               "StartBlobUpload"]
    created = fake.bodies("CreateDataset")[0]
    assert (created["ownerSlug"], created["slug"], created["isPrivate"]) == ("someone", "voc-pipeline-wheels", True)
    assert created["files"] == [{"token": "blob-0"}] and fake.uploads == {"blob-0": 1400}
    saved = fake.bodies("SaveKernel")[0]
    assert saved["slug"] == "someone/voc-pipeline" and saved["kernelType"] == "notebook"
    assert saved["enableGpu"] is True and saved["enableInternet"] is True and saved["machineShape"] == "NvidiaTeslaT4"
    assert saved["competitionDataSources"] == [THIS_YEAR]
    assert saved["datasetDataSources"] == ["someone/voc-pipeline-wheels"]
    sent = json.loads(saved["text"])
    expected = notebook_from_percent(KERNEL_SOURCE.read_text())
    assert [cell["source"] for cell in sent["cells"]] == ["".join(cell["source"]) for cell in expected["cells"]]
    assert json.loads((bundle / "kernel" / "push.json").read_text())["version"] == 1
    assert TOKEN not in out + err

    code, out, err = run(capsys, *quick("kernel", "status", "--bundle", bundle))
    assert code == 0, err
    assert "kernel someone/voc-pipeline: running" in out and "kernel someone/voc-pipeline: complete" in out
    assert fake.bodies("GetKernelSessionStatus")[0] == {"userName": "someone", "kernelSlug": "voc-pipeline"}

    fake.output_files = {"submission.csv": (demo_root / "solution.csv").read_bytes(),
                         "runs/kaggle/report.md": b"# report"}
    runs = tmp_path / "runs"
    code, out, err = run(capsys, "kernel", "output", "--bundle", bundle, "--runs-dir", runs, "--data", demo_root)
    assert code == 0, err
    assert f"{runs / 'kaggle-1' / 'submission.csv'}: 16 rows, valid" in out
    assert f"Output file downloaded to {runs / 'kaggle-1' / 'submission.csv'}" in out

    code, out, err = run(capsys, *quick("kernel", "submit", "--bundle", bundle, "--runs-dir", runs))
    assert code == 0, err
    assert "Submission ref: 50000001" in out
    assert out.index("submission 50000001: pending") < out.index("submission 50000001: complete")
    assert f"public score 0.61234 for someone/voc-pipeline version 1 on {THIS_YEAR}" in out
    assert fake.bodies("CreateCodeSubmission") == [{
        "competitionName": THIS_YEAR, "kernelOwner": "someone", "kernelSlug": "voc-pipeline", "kernelVersion": 1,
        "fileName": "submission.csv", "submissionDescription": "voc-pipeline someone/voc-pipeline version 1"}]
    assert fake.bodies("ListSubmissions")[0]["competitionName"] == THIS_YEAR
    score = json.loads((runs / "kaggle-1" / "kaggle_score.json").read_text())
    assert score["public_score"] == "0.61234" and score["submission_ref"] == 50000001 and score["version"] == 1


def built(bundle, capsys, *extra):
    code, _, err = run(capsys, "kernel", "build", "--username", "someone", "--output", bundle, "--competition",
                       THIS_YEAR, *extra)
    assert code == 0, err


def test_a_refused_source_whose_version_was_still_pushed_is_recorded_and_reported(fake, token, bundle, capsys):
    built(bundle, capsys)
    (bundle / "kernel" / "push.json").write_text(json.dumps({"kernel": "someone/voc-pipeline", "version": 7}))
    fake.joined = set()
    code, out, err = run(capsys, *quick("kernel", "push", "--bundle", bundle))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"The following are not valid competition sources and could not be added to the kernel: ['{THIS_YEAR}']" in err
    assert "yet saved version 1 of someone/voc-pipeline, which is running now without that data" in err
    assert f"join {THIS_YEAR} on kaggle.com and accept its rules" in err
    assert "Kernel version 1 successfully pushed." in out  # the client's line is shown, not hidden
    pushed = json.loads((bundle / "kernel" / "push.json").read_text())
    assert pushed["version"] == 1 and pushed["refused"]


@pytest.mark.parametrize("answer", [
    None,  # the fake's own: a plain-text 404
    Failure(404, "Dataset not found"),  # JSON-bodied: the client prints the server's message and the 404 hint
    Failure(403, "Permission 'datasets.get' was denied"),
    Failure(403, "Forbidden", json_body=False),
    Failure(404, "Not found", http_status=200),  # JSON code with HTTP 200: the message alone, no hint
])
def test_a_dataset_not_created_yet_is_recognised_in_every_form(fake, token, answer):
    if answer:
        fake.failures["datasets.DatasetApiService/GetDatasetStatus"] = answer
    assert KaggleCli.ready().dataset_status("someone/voc-pipeline-wheels") == "missing"


def test_a_server_failure_reports_the_error_line_and_kaggles_side(fake, token, bundle, capsys):
    built(bundle, capsys)
    fake.failures["datasets.DatasetApiService/GetDatasetStatus"] = Failure(503, "backend unavailable", json_body=False)
    code, _, err = run(capsys, *quick("kernel", "push", "--bundle", bundle))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "503 Server Error" in err and "the failure is on Kaggle's side" in err and "run the same command again later" in err
    assert "kaggle search" not in err and "join" not in err


def test_a_kernel_kaggle_cannot_find_gets_advice_about_the_kernel_not_the_competition(fake, token, bundle, capsys):
    built(bundle, capsys)
    fake.failures["kernels.KernelsApiService/GetKernelSessionStatus"] = Failure(404, "Notebook not found")
    code, _, err = run(capsys, *quick("kernel", "status", "--bundle", bundle))
    assert code == 2 and "Notebook not found" in err and "there is no kernel someone/voc-pipeline" in err
    assert "kaggle search" not in err and "competition" not in err


def pushed_and_fetched(fake, bundle, demo_root, runs, capsys):
    built(bundle, capsys)
    assert run(capsys, *quick("kernel", "push", "--bundle", bundle))[0] == 0
    fake.output_files = {"submission.csv": (demo_root / "solution.csv").read_bytes()}
    assert run(capsys, "kernel", "output", "--bundle", bundle, "--runs-dir", runs, "--data", demo_root)[0] == 0


def test_a_submission_that_fails_to_score_ends_in_one_line_with_the_reason(fake, token, bundle, demo_root, tmp_path,
                                                                         capsys):
    pushed_and_fetched(fake, bundle, demo_root, tmp_path / "runs", capsys)
    fake.scoring, fake.scoring_error = ["PENDING", "ERROR"], "Submission file has 16 rows, expected 1500"
    code, _, err = run(capsys, *quick("kernel", "submit", "--bundle", bundle, "--runs-dir", tmp_path / "runs"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Kaggle could not score submission 50000001: Submission file has 16 rows, expected 1500" in err
    assert not (tmp_path / "runs" / "kaggle-1" / "kaggle_score.json").exists()


def test_a_refused_submission_ends_in_one_line_with_the_reason(fake, token, bundle, demo_root, tmp_path, capsys):
    pushed_and_fetched(fake, bundle, demo_root, tmp_path / "runs", capsys)
    fake.joined = set()
    code, _, err = run(capsys, *quick("kernel", "submit", "--bundle", bundle, "--runs-dir", tmp_path / "runs"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "You must accept this competition's rules before you can submit" in err
    assert f"{THIS_YEAR} refuses this account's submissions: accept its rules" in err


def test_an_attached_dataset_that_is_not_on_kaggle_stops_the_push_before_it(fake, token, bundle, capsys):
    built(bundle, capsys, "--weights-dataset", "someone/keras-weights")
    code, _, err = run(capsys, *quick("kernel", "push", "--bundle", bundle))
    assert code == 2 and "dataset someone/keras-weights, attached in" in err and "is missing on Kaggle: upload it first" in err
    assert not fake.bodies("SaveKernel")


def test_submit_needs_the_validated_output_of_the_pushed_version(fake, token, bundle, tmp_path, capsys):
    built(bundle, capsys)
    assert run(capsys, *quick("kernel", "push", "--bundle", bundle))[0] == 0
    code, _, err = run(capsys, *quick("kernel", "submit", "--bundle", bundle, "--runs-dir", tmp_path / "runs"))
    assert code == 2 and "run `voc-pipeline kernel output` first" in err
    assert not fake.bodies("CreateCodeSubmission")


# ---------------------------------------------------------------- credentials, against the client's own verdict


def layout(home: Path, monkeypatch, case: str) -> None:
    """Write one credentials case into HOME (and the environment)."""
    kaggle_dir, xdg = home / ".kaggle", home / "xdg" / "kaggle"

    def write(path: Path, text: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    if case == "token file":
        write(kaggle_dir / "access_token", TOKEN + "\n")
    elif case == "empty token file":
        write(kaggle_dir / "access_token", "")
    elif case == "blank token file":
        write(kaggle_dir / "access_token", "  \n")
    elif case == "KAGGLE_API_TOKEN names an empty file":
        write(home / "token.txt", "")
        write(kaggle_dir / "access_token", TOKEN)
        monkeypatch.setenv("KAGGLE_API_TOKEN", str(home / "token.txt"))
    elif case == "XDG kaggle.json, no ~/.kaggle":
        write(xdg / "kaggle.json", json.dumps({"username": "someone", "key": "k" * 32}))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    elif case == "XDG kaggle.json beside ~/.kaggle":
        write(xdg / "kaggle.json", json.dumps({"username": "someone", "key": "k" * 32}))
        kaggle_dir.mkdir()
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    elif case == "kaggle.json with username and key":
        write(kaggle_dir / "kaggle.json", json.dumps({"username": "someone", "key": "k" * 32}))
    elif case == "kaggle.json without key":
        write(kaggle_dir / "kaggle.json", json.dumps({"username": "someone"}))
    elif case == "credentials.json with refresh token":
        write(kaggle_dir / "credentials.json", json.dumps({"refresh_token": "r" * 20, "access_token": TOKEN,
                                                           "access_token_expiration": future, "username": "someone"}))
    elif case == "credentials.json without refresh token":
        write(kaggle_dir / "credentials.json", json.dumps({"access_token": TOKEN, "username": "someone"}))
    elif case == "KAGGLE_API_V1_TOKEN in a Kaggle notebook":
        write(home / "v1token", TOKEN)
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "http://localhost/proxy")
        monkeypatch.setenv("KAGGLE_API_V1_TOKEN", str(home / "v1token"))
    else:
        raise ValueError(case)


CASES = {  # case -> whether the client can authenticate with it
    "token file": True, "empty token file": False, "blank token file": False,
    "KAGGLE_API_TOKEN names an empty file": False, "XDG kaggle.json, no ~/.kaggle": True,
    "XDG kaggle.json beside ~/.kaggle": False, "kaggle.json with username and key": True,
    "kaggle.json without key": False, "credentials.json with refresh token": True,
    "credentials.json without refresh token": False, "KAGGLE_API_V1_TOKEN in a Kaggle notebook": True,
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG cases are the client's Linux behaviour")
@pytest.mark.parametrize("case", list(CASES))
def test_the_credential_check_agrees_with_the_real_client(fake, home, bundle, monkeypatch, capsys, case):
    layout(home, monkeypatch, case)
    check = check_credentials()
    found_by_project = bool(check.found)
    # The client's verdict: does it send an authenticated call, or print its help and send nothing?
    code, out, err = run(capsys, "kernel", "build", "--username", "someone", "--output", bundle)
    found_by_client = bool(fake.calls("/ListCompetitions"))
    if not found_by_project:
        assert code == 2 and "no Kaggle credentials the kaggle client can use: " in err and check.problems
    result = subprocess.run([str(find_kaggle_cli()), "competitions", "list", "--group", "entered", "--csv"],
                            capture_output=True, text=True, timeout=60)
    found_by_client = found_by_client or "Authentication required" not in result.stdout
    assert found_by_project == found_by_client == CASES[case], (case, check, result.stdout[-300:])
    if not CASES[case]:
        assert not fake.calls("/ListCompetitions")  # the client sent no API call at all
    assert TOKEN not in out + err and "k" * 32 not in out + err


def test_the_credentials_command_names_what_is_wrong_and_no_value(home, monkeypatch, capsys):
    layout(home, monkeypatch, "empty token file")
    code, _, err = run(capsys, "kernel", "credentials")
    assert code == 2 and "~/.kaggle/access_token is empty" in err
    layout(home, monkeypatch, "kaggle.json with username and key")
    code, out, _ = run(capsys, "kernel", "credentials")
    assert code == 0 and f"Kaggle credentials: {home / '.kaggle' / 'kaggle.json'}" in out and "k" * 32 not in out


def test_the_guard_refuses_other_hosts(home, tmp_path):
    script = textwrap.dedent("""
        import socket
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=1)
        except OSError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert "test guard" in result.stdout


# ---------------------------------------------------------------- a notebook from a run trained before it


def pushed(capsys, bundle) -> str:
    code, out, err = run(capsys, *quick("kernel", "push", "--bundle", bundle))
    assert code == 0, err
    return out


@pytest.mark.slow
def test_a_trained_notebook_uploads_its_run_once_and_then_only_the_notebook(kaggle_stack, fake, token, bundle, tiny_run,
                                                                           tmp_path, capsys):
    config, _ = tiny_run
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "introduction.md").write_text("FIRST-NOTE\n")
    built(bundle, capsys, "--trained", config.run_dir, "--notes", notes)
    pushed(capsys, bundle)
    assert {body["slug"] for body in fake.bodies("CreateDataset")} == {"voc-pipeline-wheels", "voc-pipeline-run-tiny"}
    saved = fake.bodies("SaveKernel")[0]
    assert saved["enableInternet"] is False and not saved.get("kernelDataSources")
    assert saved["datasetDataSources"] == ["someone/voc-pipeline-wheels", "someone/voc-pipeline-run-tiny"]
    assert "install-run" in saved["text"] and '"--until", "refit"' not in saved["text"]
    uploads = dict(fake.uploads)

    (notes / "introduction.md").write_text("SECOND-NOTE\n")
    built(bundle, capsys, "--trained", config.run_dir, "--notes", notes)
    out = pushed(capsys, bundle)
    assert "dataset someone/voc-pipeline-run-tiny is unchanged on Kaggle" in out
    assert "dataset someone/voc-pipeline-wheels is unchanged on Kaggle" in out
    assert fake.bodies("CreateDatasetVersion") == [] and fake.uploads == uploads
    assert len(fake.bodies("SaveKernel")) == 2 and "SECOND-NOTE" in fake.bodies("SaveKernel")[1]["text"]


def packed_output(run_dir, folder) -> dict[str, bytes]:
    """The output files a training kernel leaves: its run, packed under trained-run/."""
    from voc_pipeline.kernel.trained_run import pack_run

    pack_run(run_dir, folder / "trained-run")
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_a_training_kernel_then_the_notebook_from_its_output(kaggle_stack, fake, token, bundle, tiny_run, tmp_path,
                                                            capsys):
    config, _ = tiny_run
    training = tmp_path / "train-bundle"
    built(training, capsys, "--training", "--profile", "smoke")
    pushed(capsys, training)
    saved = fake.bodies("SaveKernel")[0]
    assert saved["slug"] == "someone/voc-pipeline-train" and saved["enableInternet"] is True
    assert saved["enableGpu"] is True and saved["competitionDataSources"] == [THIS_YEAR]
    notebook = json.loads(saved["text"])
    source = "".join("".join(cell["source"]) for cell in notebook["cells"])
    assert 'profile = "smoke"' in source and '"--until", "refit"' in source and "pack-run" in source
    assert "classification_part" not in source

    fake.kernel_states = fake.kernel_polls = ["COMPLETE"]  # the fake answers from kernel_polls once asked
    fake.output_files = packed_output(config.run_dir, tmp_path / "kernel-output")
    built(bundle, capsys, "--from-kernel", "someone/voc-pipeline-train")
    pushed(capsys, bundle)
    saved = fake.bodies("SaveKernel")[-1]
    assert saved["slug"] == "someone/voc-pipeline" and saved["kernelDataSources"] == ["someone/voc-pipeline-train"]
    assert saved["datasetDataSources"] == ["someone/voc-pipeline-wheels"] and saved["enableInternet"] is False
    assert (bundle / "from-kernel" / "trained-run" / "voc-pipeline-run.json").is_file()


@pytest.mark.parametrize(("states", "output", "expected"), [
    (["ERROR"], {}, "training kernel someone/voc-pipeline-train failed (error: out of memory)"),
    (["RUNNING"], {}, "training kernel someone/voc-pipeline-train is still running: wait until it completes"),
    (["COMPLETE"], {"submission.csv": b"Id,Predicted\n"}, "completed but its output holds no carried run"),
])
def test_a_training_kernel_that_failed_runs_or_left_no_run_is_named(fake, token, bundle, capsys, states, output,
                                                                   expected):
    fake.kernel_states, fake.kernel_failure, fake.output_files = states, "out of memory", output
    code, _, err = run(capsys, "kernel", "build", "--username", "someone", "--output", bundle, "--competition",
                       THIS_YEAR, "--from-kernel", "someone/voc-pipeline-train")
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (bundle / "kernel").exists() and not fake.bodies("CreateDataset")
