"""The official `kaggle` command line, driven for the bundle: upload, wait, push, follow, download.

What the CLI (kaggle 2.x) does, read from its own code, and what this module does about it:
- it authenticates with an API token (`KAGGLE_API_TOKEN`, or the files `~/.kaggle/access_token` and
  `~/.kaggle/access_token.txt`), a legacy key (`kaggle.json` in `KAGGLE_CONFIG_DIR`, `~/.kaggle` or
  `$XDG_CONFIG_HOME/kaggle`, or `KAGGLE_USERNAME` with `KAGGLE_KEY`), or `kaggle auth login`'s
  `~/.kaggle/credentials.json`. This module only checks that one of them is there; it never reads a
  value, so nothing it prints can leak one;
- a rejected upload or push is printed on stdout with exit status 0 ("Kernel push error: ...", "The
  following are not valid competition sources ..."): those lines are turned into errors with the fix;
- a new dataset version is processed in the background; `datasets status` answers 404 until the dataset
  exists, then a processing state, then "ready": the kernel is pushed only once its datasets are ready.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from voc_pipeline.errors import KernelError
from voc_pipeline.files import json_kind, read_json_file, write_json_atomic

logger = logging.getLogger(__name__)

CREDENTIALS_HELP = (
    "create an API token at https://www.kaggle.com/settings/api and either export KAGGLE_API_TOKEN=<token> or "
    "save it in ~/.kaggle/access_token (or run `kaggle auth login`; a legacy ~/.kaggle/kaggle.json or "
    "KAGGLE_USERNAME with KAGGLE_KEY also work)"
)
# Lines the CLI prints on stdout, with exit status 0, when Kaggle refused what it was sent.
REJECTIONS = ("Kernel push error", "The following are not valid", "Dataset creation error",
              "Dataset version creation error", "Authentication required")


def credential_sources(environment: dict | None = None, home: Path | None = None) -> list[str]:
    """Where the kaggle CLI would find credentials, by name only (no value is read)."""
    environment = os.environ if environment is None else environment
    home = Path(home or Path.home())
    found = []
    if environment.get("KAGGLE_API_TOKEN"):
        found.append("KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt", "credentials.json"):
        if (home / ".kaggle" / name).is_file():
            found.append(f"~/.kaggle/{name}")
    if environment.get("KAGGLE_USERNAME") and environment.get("KAGGLE_KEY"):
        found.append("KAGGLE_USERNAME and KAGGLE_KEY")
    config_dirs = ([Path(environment["KAGGLE_CONFIG_DIR"])] if environment.get("KAGGLE_CONFIG_DIR") else
                   [home / ".kaggle", Path(environment.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"])
    found += [str(folder / "kaggle.json") for folder in config_dirs if (folder / "kaggle.json").is_file()]
    return found


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
        """The CLI, after checking that it is installed and has credentials."""
        executable = find_kaggle_cli()
        if not credential_sources():
            raise KernelError(f"no Kaggle credentials found: {CREDENTIALS_HELP}")
        return cls(executable, **timing)

    def run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `kaggle ARGUMENTS`; a non-zero exit or a rejection printed with exit 0 is a KernelError."""
        result = subprocess.run([str(self.executable), *arguments], capture_output=True, text=True)
        output = (result.stdout + result.stderr).strip()
        rejected = next((line for line in output.splitlines() if line.startswith(REJECTIONS)), None)
        if check and (result.returncode or rejected):
            raise KernelError(f"`kaggle {' '.join(arguments[:2])}` failed: {rejected or last_line(output)}"
                              f"{fix_for(rejected or output)}")
        return result

    def dataset_status(self, dataset: str) -> str:
        """"ready", a processing state, "failed", or "missing" (404: not created yet)."""
        result = self.run("datasets", "status", dataset, check=False)
        if result.returncode:
            if "404" in result.stdout + result.stderr:
                return "missing"
            output = result.stdout + result.stderr
            raise KernelError(f"`kaggle datasets status {dataset}` failed: {last_line(output)}{fix_for(output)}")
        lines = result.stdout.strip().splitlines()
        return lines[-1].strip().lower() if lines else "unknown"

    def wait_until_ready(self, dataset: str) -> None:
        """Poll the dataset's status until Kaggle has processed the upload (bounded by wait_seconds)."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            state = self.dataset_status(dataset)
            print(f"dataset {dataset}: {state}", flush=True)
            if state == "ready":
                return
            if state in ("failed", "deleted"):
                raise KernelError(f"Kaggle could not process dataset {dataset} (status {state}); see its page at "
                                  f"https://www.kaggle.com/datasets/{dataset} and upload it again")
            if time.monotonic() > deadline:
                raise KernelError(f"dataset {dataset} is still {state!r} after {self.wait_seconds:.0f} s; run "
                                  f"`kaggle datasets status {dataset}` until it says ready, then push again")
            time.sleep(self.poll_seconds)

    def upload_dataset(self, folder: Path) -> str:
        """Create the dataset of `folder` (its dataset-metadata.json), or add a version; wait until it is ready."""
        dataset = read_metadata(folder / "dataset-metadata.json", {"id": str})["id"]
        if self.dataset_status(dataset) == "missing":
            print(self.run("datasets", "create", "-p", str(folder), "--dir-mode", "zip").stdout.strip())
        else:
            print(self.run("datasets", "version", "-p", str(folder), "-m", "voc-pipeline update",
                           "--dir-mode", "zip").stdout.strip())
        self.wait_until_ready(dataset)
        return dataset

    def push_kernel(self, folder: Path) -> dict:
        """Push the kernel of `folder`; returns {"kernel", "version", "url"} (also saved as push.json there)."""
        kernel = read_metadata(folder / "kernel-metadata.json", KERNEL_METADATA_KEYS)["id"]
        output = self.run("kernels", "push", "-p", str(folder)).stdout.strip()
        print(output)
        match = re.search(r"Kernel version (\d+) successfully pushed.*?(https://\S+)", output, re.S)
        pushed = {"kernel": kernel, "version": int(match.group(1)) if match else None,
                  "url": match.group(2) if match else f"https://www.kaggle.com/code/{kernel}"}
        write_json_atomic(folder / "push.json", pushed)
        return pushed

    def kernel_state(self, kernel: str) -> tuple[str, str]:
        """(state in lower case: queued, running, complete, error, ...; the failure message, if any)."""
        result = self.run("kernels", "status", kernel, check=False)
        if result.returncode:
            raise unknown_kernel(kernel, result) or KernelError(
                f"`kaggle kernels status` failed: {last_line(result.stdout + result.stderr)}"
                f"{fix_for(result.stdout + result.stderr)}")
        output = result.stdout
        match = re.search(r'has status "(?:\w+\.)?(\w+)"', output)
        failure = re.search(r'Failure message: "(.*)"', output)
        return (match.group(1).lower() if match else "unknown"), (failure.group(1) if failure else "")

    def wait_for_kernel(self, kernel: str) -> str:
        """Poll the kernel's latest run until it ends; print each change of state; return the final state."""
        deadline, last = time.monotonic() + self.wait_seconds, None
        while True:
            state, failure = self.kernel_state(kernel)
            if state != last:
                print(f"kernel {kernel}: {state}", flush=True)
                last = state
            if state == "complete":
                return state
            if state in ("error", "cancel_requested", "cancel_acknowledged"):
                raise KernelError(f"the kernel's run ended with {state}{': ' + failure if failure else ''}; its log is "
                                  f"at https://www.kaggle.com/code/{kernel} (tab Logs)")
            if time.monotonic() > deadline:
                raise KernelError(f"kernel {kernel} is still {state} after {self.wait_seconds:.0f} s; run "
                                  f"`voc-pipeline kernel status` again later (a full run takes hours)")
            time.sleep(self.poll_seconds)

    def download_output(self, kernel: str, folder: Path) -> Path:
        """Download the latest run's output files into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        result = self.run("kernels", "output", kernel, "-p", str(folder), "-o", check=False)
        if result.returncode:
            raise unknown_kernel(kernel, result) or KernelError(
                f"`kaggle kernels output` failed: {last_line(result.stdout + result.stderr)}"
                f"{fix_for(result.stdout + result.stderr)}")
        print(result.stdout.strip())
        return folder


def unknown_kernel(kernel: str, result: subprocess.CompletedProcess) -> KernelError | None:
    """The error for a kernel Kaggle does not know (the CLI answers 404), with what to check; None otherwise."""
    output = result.stdout + result.stderr
    if "404" not in output and "Not Found" not in output:
        return None
    return KernelError(f"Kaggle knows no kernel {kernel} (404): check the OWNER/SLUG (--kernel, or the id in the "
                       f"bundle's kernel/kernel-metadata.json); a kernel exists once `voc-pipeline kernel push` has "
                       f"pushed it, and another account's private kernel is invisible to yours")


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


def last_line(output: str) -> str:
    """The CLI's last line of output (the exception of a traceback), shortened: the error's gist."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:400]


def fix_for(message: str) -> str:
    """What to do about a rejection or failure the CLI printed."""
    if "ConnectionError" in message or "Max retries exceeded" in message or "Name or service not known" in message:
        return "; Kaggle cannot be reached from this machine: check the internet connection (or HTTPS_PROXY)"
    if "competition" in message.lower():
        return ("; join the competition on kaggle.com and accept its rules (the Join or Late Submission button "
                "on its page), check the slug given to `kernel build --competition`, then push again")
    if "dataset" in message.lower():
        return "; check that every dataset in kernel-metadata.json exists, is yours or public, and is ready"
    if "authentication" in message.lower() or "401" in message:
        return f"; {CREDENTIALS_HELP}"
    return ""


def read_bundle(bundle: Path) -> tuple[Path, Path]:
    """(dataset folder, kernel folder) of a built bundle, or an error naming the command that builds it."""
    dataset, kernel = Path(bundle) / "dataset", Path(bundle) / "kernel"
    for needed in (dataset / "dataset-metadata.json", kernel / "kernel-metadata.json"):
        if not needed.exists():
            raise KernelError(f"{needed} is missing: run `voc-pipeline kernel build --username YOU` first")
    return dataset, kernel


def push_bundle(bundle: str | Path, weights: str | Path | None = None, cli: KaggleCli | None = None) -> dict:
    """Upload the weights dataset (if given) and the wheel dataset, wait until Kaggle has processed them,
    then push the kernel, which Kaggle starts running; returns the push record."""
    dataset, kernel = read_bundle(Path(bundle))
    cli = cli or KaggleCli.ready()
    uploaded = set()
    if weights is not None:
        if not (Path(weights) / "dataset-metadata.json").exists():
            raise KernelError(f"{weights} is not a weights dataset folder: make it with `voc-pipeline kernel weights`")
        uploaded.add(cli.upload_dataset(Path(weights)))
    uploaded.add(cli.upload_dataset(dataset))
    for attached in read_metadata(kernel / "kernel-metadata.json", KERNEL_METADATA_KEYS)["dataset_sources"]:
        state = "ready" if attached in uploaded else cli.dataset_status(attached)
        if state != "ready":
            raise KernelError(f"dataset {attached}, attached in {kernel / 'kernel-metadata.json'}, is {state} on Kaggle: "
                              f"upload it first (`voc-pipeline kernel push --weights FOLDER` for a weights dataset) "
                              f"or build the bundle without it")
    pushed = cli.push_kernel(kernel)
    print(f"pushed {pushed['kernel']} version {pushed['version']}: {pushed['url']}\n"
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
    return (read_metadata(folder / "kernel-metadata.json", KERNEL_METADATA_KEYS)["id"],
            str(pushed.get("version") or "latest"))


def follow_kernel(bundle: str | Path, kernel: str | None = None, cli: KaggleCli | None = None) -> str:
    """Wait for the kernel's latest run to end, showing its state; returns "complete"."""
    kernel_id, _ = kernel_of(Path(bundle), kernel)
    return (cli or KaggleCli.ready()).wait_for_kernel(kernel_id)


def fetch_kernel_output(bundle: str | Path, runs_dir: str | Path, test_root: Path | None,
                        kernel: str | None = None, cli: KaggleCli | None = None) -> Path:
    """Download the latest run's output into runs/kaggle-<version>/, validate its submission.csv, and say
    where its report is. Returns the folder."""
    from voc_pipeline.data.submission import validate_submission

    kernel_id, version = kernel_of(Path(bundle), kernel)
    folder = (cli or KaggleCli.ready()).download_output(kernel_id, Path(runs_dir) / f"kaggle-{version}")
    submission = folder / "submission.csv"
    if not submission.exists():
        raise KernelError(f"the kernel's output in {folder} holds no submission.csv: did its run complete? "
                          f"(`voc-pipeline kernel status`)")
    report = validate_submission(submission, test_root)
    if not report.valid:
        raise KernelError(f"{submission} does not validate: " + "; ".join(report.problems[:10]))
    reports = sorted(folder.rglob("report.md"))
    print(f"{submission}: {report.rows} rows, valid{'' if test_root else ' (format only: no local test images to check sizes against)'}")
    print(f"report: {reports[0] if reports else 'not in the output'}")
    return folder
