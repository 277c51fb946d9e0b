"""The official `kaggle` command line, driven for the bundle: upload, wait, push, follow, download, submit.

What the CLI (kaggle 2.2.x with kagglesdk) does, read from its own code, and what this module does about it:
- it authenticates with an API token, a legacy key or `kaggle auth login`'s credentials
  (`voc_pipeline.kernel.credentials` decides, case by case as the client does, whether one is usable;
  it never reads a value out, so nothing it prints can leak one);
- a refused upload or push is printed on stdout with exit status 0 ("Kernel push error: ...", "The
  following are not valid competition sources ..."). A push whose sources were refused still saves and
  runs a new version ("Kernel version N successfully pushed" follows the refusal): that version is
  recorded and reported as running without its data;
- an HTTP failure is printed as the error, a blank line and a hint chosen by the status code ("The
  resource was not found ... try 'kaggle search <query>'."); `read_failure` takes the error line and the
  status (from "404 Client Error" or, for a JSON-bodied answer whose message alone is printed, from the
  hint), and `fix_for` chooses the advice by the command called and the status answered;
- `datasets status` answers 404 or 403 (as text or as Kaggle's JSON message) until the dataset exists,
  then a processing state, then "ready": the kernel is pushed only once its datasets are ready.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from voc_pipeline.errors import KernelError
from voc_pipeline.files import hash_file, json_kind, read_json_file, write_json_atomic
from voc_pipeline.kernel.bundle import CONTENT_HASH_LABEL
from voc_pipeline.kernel.credentials import CREDENTIALS_HELP, check_credentials

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Lines the CLI prints on stdout, with exit status 0, when Kaggle refused what it was sent.
REJECTIONS = ("Kernel push error", "The following are not valid", "Dataset creation error",
              "Dataset version creation error", "Authentication required")
# The hints the client prints after an HTTP error (kaggle_api_extended._HTTP_ERROR_HINTS and its 5xx hint),
# by their first words, with the status each one stands for; and its "unexpected error" footer.
HINTS = {"You don't have access to this resource.": 403, "If this is a competition, you may need": 403,
         "https://www.kaggle.com/competitions/<competition>/rules": 403,
         "The resource was not found.": 404, "References are usually": 404, "To search for one, try": 404,
         "You have been rate limited.": 429, "This is a problem on Kaggle's side": 500,
         "If this is unexpected, you can re-run with": None, "traceback. If you think this is a bug": None}
HTTP_ERROR = re.compile(r"\b([1-5]\d\d) (?:Client|Server) Error")
# Server messages that, for `datasets status`, mean the dataset does not exist (yet) for this user, when a
# JSON body carries its code with another HTTP status and the client prints the message alone.
NOT_FOUND_MESSAGE = re.compile(r"not found|does not exist|was denied|no such|permission", re.I)


@dataclass(frozen=True)
class Failure:
    """What a failed client call printed: its error line and the HTTP status, when one can be told."""

    line: str
    status: int | None = None


def read_failure(output: str) -> Failure:
    """The error line of the client's output (a refusal, else the error before the hint, else its last line)
    and the HTTP status it stands for."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    status = None
    kept = []
    for line in lines:
        hint = next((start for start in HINTS if line.startswith(start)), None)
        if hint is None:
            kept.append(line)
        elif status is None:
            status = HINTS[hint]
    if any(line.startswith("Authentication required") for line in kept):
        return Failure("Authentication required to call the Kaggle API (the client found no usable credentials)", 401)
    refusal = next((line for line in kept if line.startswith(REJECTIONS)), None)
    if refusal:
        return Failure(refusal[:400], status)
    coded = next((line for line in kept if HTTP_ERROR.search(line)), None)
    if coded and status is None:
        status = int(HTTP_ERROR.search(coded).group(1))
    if not kept:
        return Failure("no output", status)
    line = kept[-1]
    # A ValueError of the client reads "<what happened>\n  Error: <the HTTP error>": keep both halves.
    if line.startswith("Error:") and len(kept) > 1:
        line = f"{kept[-2]} ({line})"
    return Failure(line[:400], status)


def find_kaggle_cli(interpreter: str | Path | None = None) -> Path:
    """The `kaggle` executable: beside the running interpreter (a virtual environment's bin/), else on PATH."""
    beside = Path(interpreter or sys.executable).parent / ("kaggle.exe" if os.name == "nt" else "kaggle")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("kaggle")
    if on_path:
        return Path(on_path)
    raise KernelError(f"the `kaggle` command is installed neither beside {Path(interpreter or sys.executable)} nor "
                      f"on PATH: pip install 'voc-pipeline[kaggle]' (make kaggle-push does it for you)")


@dataclass
class KaggleCli:
    """The `kaggle` executable, with how long to wait for Kaggle's background work."""

    executable: Path
    poll_seconds: float = 10.0
    wait_seconds: float = 900.0

    @classmethod
    def ready(cls, **timing) -> KaggleCli:
        """The CLI, after checking that it is installed and has credentials it can use."""
        executable = find_kaggle_cli()
        check = check_credentials()
        if not check.found:
            raise KernelError(check.explain())
        return cls(executable, **timing)

    def run(self, *arguments: str, check: bool = True, echo: bool = False,
            context: dict | None = None) -> subprocess.CompletedProcess:
        """Run `kaggle ARGUMENTS`; a non-zero exit or a refusal printed with exit 0 is a KernelError naming the
        error line and the fix. With `echo`, the client's output (its progress bars too) is shown as it comes."""
        command = [str(self.executable), *arguments]
        if echo:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            chunks = []
            while chunk := process.stdout.read1(65536):
                chunks.append(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            if chunks and not chunks[-1].endswith(b"\n"):
                print(flush=True)  # the client prints some results without a final newline
            result = subprocess.CompletedProcess(command, process.wait(), b"".join(chunks).decode(errors="replace"), "")
        else:
            result = subprocess.run(command, capture_output=True, text=True)
        output = (result.stdout + result.stderr).strip()
        refused = any(line.startswith(REJECTIONS) for line in output.splitlines())
        if check and (result.returncode or refused):
            raise self.failure(arguments, output, context)
        return result

    @staticmethod
    def failure(arguments, output: str, context: dict | None = None) -> KernelError:
        """The KernelError for a failed call: `kaggle <command>` failed: <error line>; <fix>."""
        failure = read_failure(output)
        return KernelError(f"`kaggle {' '.join(arguments[:2])}` failed: {failure.line}"
                           f"{fix_for(tuple(arguments[:2]), failure, context or {})}")

    def dataset_status(self, dataset: str) -> str:
        """"ready", a processing state, "failed", or "missing" (not created yet, or not visible to this user:
        404 or 403, as text or as Kaggle's JSON message)."""
        result = self.run("datasets", "status", dataset, check=False)
        output = (result.stdout + result.stderr).strip()
        if result.returncode:
            failure = read_failure(output)
            if failure.status in (403, 404) or (failure.status is None and NOT_FOUND_MESSAGE.search(failure.line)):
                return "missing"
            raise self.failure(("datasets", "status"), output, {"dataset": dataset})
        lines = result.stdout.strip().splitlines()
        return lines[-1].strip().lower() if lines else "unknown"

    def wait_until_ready(self, dataset: str) -> None:
        """Poll the dataset's status until Kaggle has processed the upload (bounded by wait_seconds)."""
        def check() -> tuple[str, bool | None]:
            state = self.dataset_status(dataset)
            if state in ("failed", "deleted"):
                raise KernelError(f"Kaggle could not process dataset {dataset} (status {state}); see its page at "
                                  f"https://www.kaggle.com/datasets/{dataset} and upload it again")
            return state, True if state == "ready" else None

        poll_until(f"dataset {dataset}", check,
                   lambda state: f"dataset {dataset} is still {state!r} after {self.wait_seconds:.0f} s; run "
                                 f"`kaggle datasets status {dataset}` until it says ready, then push again",
                   self.poll_seconds, self.wait_seconds)

    def upload_dataset(self, folder: Path) -> str:
        """Create the dataset of `folder` (its dataset-metadata.json), or add a version; wait until it is ready.
        The client's upload lines are shown as they come."""
        dataset = read_metadata(folder / "dataset-metadata.json", {"id": str})["id"]
        context = {"dataset": dataset}
        if self.dataset_status(dataset) == "missing":
            self.run("datasets", "create", "-p", str(folder), "--dir-mode", "zip", echo=True, context=context)
        else:
            self.run("datasets", "version", "-p", str(folder), "-m", "voc-pipeline update", "--dir-mode", "zip",
                     echo=True, context=context)
        self.wait_until_ready(dataset)
        return dataset

    def published_content_hash(self, dataset: str) -> str | None:
        """The content hash in the description of the dataset's latest version on Kaggle (`kaggle datasets metadata`),
        None if the dataset does not exist yet or its description holds none."""
        if self.dataset_status(dataset) == "missing":
            return None
        with tempfile.TemporaryDirectory(prefix="kaggle-metadata-") as folder:
            self.run("datasets", "metadata", "-p", folder, dataset, context={"dataset": dataset})
            path = Path(folder) / "dataset-metadata.json"
            metadata = read_json_file(path, "the dataset's metadata", error_type=KernelError) if path.is_file() else {}
        # The client (2.2) writes the API's whole answer, {"info": {...}}; older clients wrote the info itself.
        info = metadata.get("info") if isinstance(metadata.get("info"), dict) else metadata
        description = str(info.get("description") or "")
        match = re.search(re.escape(CONTENT_HASH_LABEL) + r"([0-9a-f]{64})", description)
        return match.group(1) if match else None

    def upload_if_changed(self, folder: Path) -> str:
        """Upload the dataset of `folder` unless its latest version on Kaggle holds the same content (the hash in both
        descriptions); returns its id."""
        metadata = read_metadata(folder / "dataset-metadata.json", {"id": str})
        match = re.search(re.escape(CONTENT_HASH_LABEL) + r"([0-9a-f]{64})", str(metadata.get("description") or ""))
        if match and self.published_content_hash(metadata["id"]) == match.group(1):
            print(f"dataset {metadata['id']} is unchanged on Kaggle (content sha256 {match.group(1)[:12]}): not uploaded")
            return metadata["id"]
        return self.upload_dataset(folder)

    def push_kernel(self, folder: Path) -> dict:
        """Push the kernel of `folder`; returns {"kernel", "version", "url", "competition", "refused"} (also saved
        as push.json there). A push whose sources Kaggle refused, but which still saved a version, is recorded
        (that version runs, without the refused data) and then raised as a KernelError."""
        metadata = read_metadata(folder / "kernel-metadata.json", KERNEL_METADATA_KEYS)
        kernel = metadata["id"]
        competition = (metadata.get("competition_sources") or [None])[0]
        context = {"kernel": kernel, "competition": competition}
        result = self.run("kernels", "push", "-p", str(folder), check=False, echo=True)
        output = (result.stdout + result.stderr).strip()
        match = re.search(r"Kernel version (\d+) successfully pushed.*?(https?://\S+)", output, re.S)
        refused = [line.strip() for line in output.splitlines() if line.strip().startswith(REJECTIONS)]
        if not match:
            raise self.failure(("kernels", "push"), output, context)
        pushed = {"kernel": kernel, "version": int(match.group(1)), "url": match.group(2),
                  "competition": competition, "refused": refused}
        write_json_atomic(folder / "push.json", pushed)
        if refused or result.returncode:
            failure = read_failure(output)
            raise KernelError(f"Kaggle refused part of the push ({failure.line}), yet saved version {pushed['version']}"
                              f" of {kernel}, which is running now without that data (recorded in "
                              f"{folder / 'push.json'}: `kernel status` follows it and will show it fail)"
                              f"{fix_for(('kernels', 'push'), failure, context)}")
        return pushed

    def kernel_state(self, kernel: str) -> tuple[str, str]:
        """(state in lower case: queued, running, complete, error, ...; the failure message, if any)."""
        output = self.run("kernels", "status", kernel, context={"kernel": kernel}).stdout
        match = re.search(r'has status "(?:\w+\.)?(\w+)"', output)
        failure = re.search(r'Failure message: "(.*)"', output)
        return (match.group(1).lower() if match else "unknown"), (failure.group(1) if failure else "")

    def wait_for_kernel(self, kernel: str) -> str:
        """Poll the kernel's latest run until it ends; print each change of state; return the final state."""
        def check() -> tuple[str, str | None]:
            state, failure = self.kernel_state(kernel)
            if state in ("error", "cancel_requested", "cancel_acknowledged"):
                raise KernelError(f"the kernel's run ended with {state}{': ' + failure if failure else ''}; its log is "
                                  f"at https://www.kaggle.com/code/{kernel} (tab Logs)")
            return state, state if state == "complete" else None

        return poll_until(f"kernel {kernel}", check,
                          lambda state: f"kernel {kernel} is still {state} after {self.wait_seconds:.0f} s; run "
                                        f"`voc-pipeline kernel status` again later (a full run takes hours)",
                          self.poll_seconds, self.wait_seconds)

    def download_output(self, kernel: str, folder: Path) -> Path:
        """Download the latest run's output files into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.run("kernels", "output", kernel, "-p", str(folder), "-o", echo=True, context={"kernel": kernel})
        return folder

    def submit_kernel_version(self, competition: str, kernel: str, version: int, file_name: str, message: str) -> int:
        """Submit a kernel version's output file to the competition; returns the submission's ref."""
        result = self.run("competitions", "submit", "-c", competition, "-k", kernel, "-v", str(int(version)),
                          "-f", file_name, "-m", message, echo=True,
                          context={"competition": competition, "kernel": kernel, "version": version})
        match = re.search(r"Submission ref: (\d+)", result.stdout + result.stderr)
        if not match:
            raise KernelError(f"`kaggle competitions submit` printed no submission ref: "
                              f"{read_failure(result.stdout + result.stderr).line}")
        return int(match.group(1))

    def submission(self, competition: str, ref: int) -> dict | None:
        """The row of `competitions submissions -c SLUG --csv` for submission `ref` (None if not listed yet)."""
        output = self.run("competitions", "submissions", "-c", competition, "--csv",
                          context={"competition": competition}).stdout
        rows = csv.DictReader(io.StringIO("\n".join(line for line in output.splitlines() if "," in line)))
        return next((row for row in rows if row.get("ref", "").strip() == str(ref)), None)

    def submission_error(self, ref: int) -> str:
        """The scoring error Kaggle gives for submission `ref` (`competitions submission REF`)."""
        result = self.run("competitions", "submission", str(ref), check=False)
        match = re.search(r"^Error:\s*(.*)$", result.stdout, re.M)
        return match.group(1).strip() if match else read_failure(result.stdout + result.stderr).line

    def wait_for_score(self, competition: str, ref: int) -> dict:
        """Poll the competition's submissions until `ref` is scored; print each change of state; return its row."""
        def check() -> tuple[str, dict | None]:
            row = self.submission(competition, ref)
            state = (row or {}).get("status", "not listed yet").split(".")[-1].lower()
            if state == "error":
                raise KernelError(f"Kaggle could not score submission {ref}: {self.submission_error(ref)}; fix the "
                                  f"kernel's submission.csv (`voc-pipeline validate`), push again and submit the new version")
            return state, row if state == "complete" else None

        return poll_until(f"submission {ref}", check,
                          lambda state: f"submission {ref} is still {state} after {self.wait_seconds:.0f} s; see "
                                        f"`kaggle competitions submissions -c {competition}` later",
                          self.poll_seconds, self.wait_seconds)


def poll_until(name: str, check: Callable[[], tuple[str, T | None]], describe: Callable[[str], str],
               poll_seconds: float, wait_seconds: float) -> T:
    """Call `check` every poll_seconds until it returns a result; print `name: state` at each change of state.

    Arguments:
        name: what is waited for, as printed ("kernel OWNER/SLUG").
        check: returns (state, result), the result None while still waiting; it raises KernelError for a state
            that ended in failure.
        describe: the timeout message for the last state seen.
        poll_seconds: the pause between two checks.
        wait_seconds: how long to keep checking.

    Returns:
        The first result that is not None.

    Raises:
        KernelError: describe(state) once wait_seconds have passed without a result.
    """
    deadline, last = time.monotonic() + wait_seconds, None
    while True:
        state, result = check()
        if state != last:
            print(f"{name}: {state}", flush=True)
            last = state
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise KernelError(describe(state))
        time.sleep(poll_seconds)


# What `kernel push`, `status` and `output` need from kernel-metadata.json, by type.
KERNEL_METADATA_KEYS = {"id": str, "dataset_sources": list}
REBUILD = "; `voc-pipeline kernel build --username YOU` rewrites it"


def read_metadata(path: Path, keys: dict[str, type]) -> dict:
    """A bundle's metadata JSON, checked for the keys (and their types) this module reads.

    Raises:
        KernelError: the file is not JSON, not an object, or a key is missing or of another type (hand-edited).
    """
    metadata = read_json_file(path, f"a JSON object with {', '.join(keys)}", REBUILD, KernelError)
    for key, kind in keys.items():
        if not isinstance(metadata.get(key), kind):
            found = "has no" if key not in metadata else f"holds {json_kind(metadata[key])} as its"
            raise KernelError(f"{path} {found} {key!r}, expected {'a list' if kind is list else 'a string'} "
                              f"there{REBUILD}")
    if "id" in keys and metadata["id"].count("/") != 1:
        raise KernelError(f"{path}: id {metadata['id']!r} must be OWNER/SLUG{REBUILD}")
    return metadata


def fix_for(command: tuple[str, ...], failure: Failure, context: dict) -> str:
    """What to do about a failure, chosen by the command that was called and what Kaggle answered."""
    line, status = failure.line, failure.status
    competition = context.get("competition") or "SLUG"
    kernel = context.get("kernel") or "OWNER/KERNEL"
    if "ConnectionError" in line or "Max retries exceeded" in line or "Name or service not known" in line:
        return "; Kaggle cannot be reached from this machine: check the internet connection (or HTTPS_PROXY)"
    if status == 401:
        return f"; {CREDENTIALS_HELP}"
    if status == 429:
        return "; Kaggle is rate-limiting this account: wait a few minutes, then run the same command again"
    if status is not None and status >= 500:
        return "; the failure is on Kaggle's side: run the same command again later"
    if line.startswith("The following are not valid competition sources"):
        return (f"; join {competition} on kaggle.com and accept its rules (https://www.kaggle.com/competitions/"
                f"{competition}/rules), or build for the competition you joined (`kernel build --competition SLUG`, "
                f"`make kaggle-push COMPETITION=SLUG`), then push again")
    if line.startswith("The following are not valid dataset sources"):
        return ("; every dataset in kernel-metadata.json must exist, be yours or public, and be ready: upload it "
                "(`voc-pipeline kernel push` uploads the wheels, `--weights FOLDER` a weights dataset), then push again")
    if command == ("competitions", "download"):
        if status == 403:
            return (f"; accept the rules of {competition} at https://www.kaggle.com/competitions/{competition}/rules "
                    f"(the Join Competition button), then download again")
        if status == 404:
            return (f"; there is no competition {competition}: check --competition (`kaggle competitions list "
                    f"--group entered` lists those you entered)")
    if command == ("competitions", "submit"):
        if status == 403:
            return (f"; {competition} refuses this account's submissions: accept its rules at "
                    f"https://www.kaggle.com/competitions/{competition}/rules, check that it still accepts submissions "
                    f"and that today's limit is not reached")
        if status == 404:
            return (f"; Kaggle knows no competition {competition} with kernel {kernel} version "
                    f"{context.get('version', 'N')}: check --competition and that the version finished running")
    if command in (("competitions", "submissions"), ("competitions", "list")) and status in (403, 404):
        return f"; check --competition {competition} (`kaggle competitions list --group entered`)"
    if command in (("datasets", "create"), ("datasets", "version")) and status in (403, 409):
        return (f"; the dataset id {context.get('dataset')} must be under your Kaggle user name: rebuild with "
                f"`voc-pipeline kernel build --username YOU`")
    if command in (("kernels", "status"), ("kernels", "output")) and status in (401, 403, 404) \
            or "Cannot access kernel" in line:
        return (f"; there is no kernel {kernel} this account can see: push it first (`voc-pipeline kernel push`), or "
                f"check --username at `kernel build` and --kernel")
    if line.startswith("Kernel push error"):
        return "; fix what the error names in kernel-metadata.json (`voc-pipeline kernel build` writes it), then push again"
    return ""


def read_bundle(bundle: Path) -> tuple[Path, Path]:
    """(dataset folder, kernel folder) of a built bundle, or an error naming the command that builds it."""
    dataset, kernel = Path(bundle) / "dataset", Path(bundle) / "kernel"
    for needed in (dataset / "dataset-metadata.json", kernel / "kernel-metadata.json"):
        if not needed.exists():
            raise KernelError(f"{needed} is missing: run `voc-pipeline kernel build --username YOU` first")
    return dataset, kernel


def bundle_competition(bundle: Path, competition: str | None = None) -> str:
    """The competition the bundle was built for (its kernel-metadata.json); `competition`, when given, must agree."""
    _, kernel = read_bundle(Path(bundle))
    built_for = (read_metadata(kernel / "kernel-metadata.json", KERNEL_METADATA_KEYS).get("competition_sources") or [None])[0]
    if competition and built_for and competition != built_for:
        raise KernelError(f"the bundle in {bundle} was built for {built_for}, not {competition}: rebuild it with "
                          f"`voc-pipeline kernel build --competition {competition}` (make kaggle-push COMPETITION=...)")
    if not (competition or built_for):
        raise KernelError(f"{kernel / 'kernel-metadata.json'} names no competition: rebuild with `kernel build`")
    return competition or built_for


def push_bundle(bundle: str | Path, weights: str | Path | None = None, cli: KaggleCli | None = None,
                competition: str | None = None) -> dict:
    """Upload the weights dataset (if given), the wheel dataset and the carried run's dataset (a `--trained` bundle),
    each only when its content changed since its latest version on Kaggle, wait until Kaggle has processed them,
    then push the kernel, which Kaggle starts running; returns the push record."""
    dataset, kernel = read_bundle(Path(bundle))
    bundle_competition(Path(bundle), competition)
    cli = cli or KaggleCli.ready()
    uploaded = set()
    if weights is not None:
        if not (Path(weights) / "dataset-metadata.json").exists():
            raise KernelError(f"{weights} is not a weights dataset folder: make it with `voc-pipeline kernel weights`")
        uploaded.add(cli.upload_if_changed(Path(weights)))
    uploaded.add(cli.upload_if_changed(dataset))
    metadata = read_metadata(kernel / "kernel-metadata.json", KERNEL_METADATA_KEYS)
    run = Path(bundle) / "run"
    if (run / "dataset-metadata.json").is_file() and \
            read_metadata(run / "dataset-metadata.json", {"id": str})["id"] in metadata["dataset_sources"]:
        uploaded.add(cli.upload_if_changed(run))
    for attached in metadata["dataset_sources"]:
        state = "ready" if attached in uploaded else cli.dataset_status(attached)
        if state != "ready":
            raise KernelError(f"dataset {attached}, attached in {kernel / 'kernel-metadata.json'}, is {state} on Kaggle: "
                              f"upload it first (`voc-pipeline kernel push --weights FOLDER` for a weights dataset) "
                              f"or build the bundle without it")
    pushed = cli.push_kernel(kernel)
    print(f"pushed {pushed['kernel']} version {pushed['version']} for {pushed['competition']}: {pushed['url']}\n"
          f"next: `voc-pipeline kernel status` waits for the run, `voc-pipeline kernel output` fetches its submission")
    return pushed


def kernel_of(bundle: Path, kernel: str | None) -> tuple[str, str]:
    """(kernel id, version label) from --kernel, else from the bundle's metadata and its last push."""
    push_record = Path(bundle) / "kernel" / "push.json"
    pushed = read_json_file(push_record, "the record of the last push", "; `voc-pipeline kernel push` rewrites it "
                            "(or delete it)", KernelError) if push_record.exists() else {}
    if kernel:
        if kernel.count("/") != 1 or not all(kernel.split("/")):
            raise KernelError(f"--kernel {kernel!r} must be OWNER/SLUG, as in https://www.kaggle.com/code/OWNER/SLUG")
        return kernel, str(pushed.get("version") or "latest") if pushed.get("kernel") == kernel else "latest"
    _, folder = read_bundle(Path(bundle))
    return read_metadata(folder / "kernel-metadata.json", KERNEL_METADATA_KEYS)["id"], str(pushed.get("version") or "latest")


def follow_kernel(bundle: str | Path, kernel: str | None = None, cli: KaggleCli | None = None,
                  competition: str | None = None) -> str:
    """Wait for the kernel's latest run to end, showing its state; returns "complete"."""
    if competition and not kernel:
        bundle_competition(Path(bundle), competition)
    kernel_id, _ = kernel_of(Path(bundle), kernel)
    return (cli or KaggleCli.ready()).wait_for_kernel(kernel_id)


OUTPUT_RECORD = "output.json"
SCORE_RECORD = "kaggle_score.json"


def fetch_kernel_output(bundle: str | Path, runs_dir: str | Path, test_root: Path | None,
                        kernel: str | None = None, cli: KaggleCli | None = None, competition: str | None = None) -> Path:
    """Download the latest run's output into runs/kaggle-<version>/, validate its submission.csv, and say
    where its report is; the validation is recorded in output.json there (what `kernel submit` requires).
    Returns the folder."""
    from voc_pipeline.data.submission import validate_submission

    if competition and not kernel:
        bundle_competition(Path(bundle), competition)
    kernel_id, version = kernel_of(Path(bundle), kernel)
    folder = (cli or KaggleCli.ready()).download_output(kernel_id, Path(runs_dir) / f"kaggle-{version}")
    submission = folder / "submission.csv"
    if not submission.exists():
        raise KernelError(f"the kernel's output in {folder} holds no submission.csv: did its run complete? "
                          f"(`voc-pipeline kernel status`)")
    report = validate_submission(submission, test_root)
    if not report.valid:
        raise KernelError(f"{submission} does not validate: " + "; ".join(report.problems[:10]))
    write_json_atomic(folder / OUTPUT_RECORD, {
        "kernel": kernel_id, "version": version, "submission": submission.name, "rows": report.rows,
        "sizes_checked": test_root is not None, "sha256": hash_file(submission)})
    reports = sorted(folder.rglob("report.md"))
    print(f"{submission}: {report.rows} rows, valid{'' if test_root else ' (format only: no local test images to check sizes against)'}")
    print(f"report: {reports[0] if reports else 'not in the output'}")
    return folder


def submit_kernel_output(bundle: str | Path, runs_dir: str | Path, competition: str | None = None,
                         message: str | None = None, cli: KaggleCli | None = None) -> dict:
    """Submit the pushed kernel version's submission.csv (validated by `kernel output`) to the competition,
    wait until Kaggle has scored it, print its public score and save runs/kaggle-<version>/kaggle_score.json."""
    competition = bundle_competition(Path(bundle), competition)
    kernel_id, version = kernel_of(Path(bundle), None)
    if not version.isdigit():
        raise KernelError(f"no pushed version is recorded in {Path(bundle) / 'kernel' / 'push.json'}: push the kernel "
                          f"first (`voc-pipeline kernel push`), or push again to record one")
    folder = Path(runs_dir) / f"kaggle-{version}"
    record = folder / OUTPUT_RECORD
    checked = read_json_file(record, "the record of `kernel output`", "; `voc-pipeline kernel output` rewrites it",
                             KernelError) if record.exists() else {}
    submission = folder / checked.get("submission", "submission.csv")
    if not checked or checked.get("kernel") != kernel_id or not submission.exists() \
            or hash_file(submission) != checked.get("sha256"):
        raise KernelError(f"{submission} of version {version} has not been fetched and validated (or changed since): "
                          f"run `voc-pipeline kernel output` first")
    cli = cli or KaggleCli.ready()
    message = message or f"voc-pipeline {kernel_id} version {version}"
    ref = cli.submit_kernel_version(competition, kernel_id, int(version), submission.name, message)
    row = cli.wait_for_score(competition, ref)
    score = {"competition": competition, "kernel": kernel_id, "version": int(version), "submission_ref": ref,
             "status": "complete", "public_score": row.get("publicScore") or None,
             "private_score": row.get("privateScore") or None, "date": row.get("date"), "description": message}
    write_json_atomic(folder / SCORE_RECORD, score)
    print(f"public score {score['public_score'] or '(not published)'} for {kernel_id} version {version} on "
          f"{competition} (submission {ref}); saved in {folder / SCORE_RECORD}")
    return score
