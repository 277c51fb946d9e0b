"""The `voc-pipeline` command line: a parser built by one small function per command group, and a handler per
command that only reads its arguments and calls the package (the stages, the data tools, the kernel client,
the benchmarks). Every user error ends in one `error:` line and exit status 2 (main)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from voc_pipeline import __version__
from voc_pipeline.config import apply_overrides, available_profiles, build_config, config_to_toml, validate_config
from voc_pipeline.errors import VocPipelineError
from voc_pipeline.native_logs import quiet_tensorflow

logger = logging.getLogger("voc_pipeline")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --run, --runs-dir, --profile and --set, shared by every stage."""
    parser.add_argument("--data", help="data root in the competition layout (default: found under /kaggle/input, else ./data)")
    parser.add_argument("--run", help="run folder name under --runs-dir (default: 'default')")
    parser.add_argument("--runs-dir", help="parent folder of run folders (default: runs)")
    parser.add_argument("--profile", help=f"configuration profile: {', '.join(available_profiles())}, or a .toml path")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override one configuration key, e.g. --set data.validation_fraction=0.25 (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun the stage even if it is current")


def config_from_arguments(arguments: argparse.Namespace):
    """Resolve the configuration: profile, then --set, then the --data/--run/--runs-dir shortcuts."""
    config = build_config(arguments.profile, arguments.assignments)
    shortcuts = {}
    if arguments.data:
        shortcuts["data"] = {"root": str(arguments.data)}
    if arguments.run:
        shortcuts["run_name"] = arguments.run
    if arguments.runs_dir:
        shortcuts["runs_dir"] = str(arguments.runs_dir)
    config = apply_overrides(config, shortcuts)
    validate_config(config)
    return config


def command_data_demo(arguments) -> int:
    from voc_pipeline.data.demo import write_demo_data

    write_demo_data(arguments.output, arguments.n_train, arguments.n_test, arguments.seed, arguments.force)
    print(f"demo data written to {arguments.output}")
    return 0


def command_data_from_voc(arguments) -> int:
    from voc_pipeline.data.voc_devkit import convert_devkit

    convert_devkit(arguments.voc_root, arguments.output, arguments.ids, arguments.test_fraction,
                   arguments.keep_void, arguments.seed, arguments.force)
    print(f"competition layout written to {arguments.output}")
    return 0


def command_stage(arguments) -> int:
    """Run one stage of the graph (it checks that the stages it depends on are current)."""
    from voc_pipeline.graph import run_stage

    run_stage(config_from_arguments(arguments), arguments.stage, force=arguments.force)
    return 0


def command_run(arguments) -> int:
    """Run every stage up to --until that is not current."""
    from voc_pipeline.graph import run_until

    outcomes = run_until(config_from_arguments(arguments), arguments.until, force=arguments.force,
                         no_training=arguments.no_training)
    ran = [stage for stage, outcome in outcomes.items() if outcome == "ran"]
    print(f"ran: {', '.join(ran) or 'nothing'}; current already: "
          f"{', '.join(stage for stage, outcome in outcomes.items() if outcome != 'ran') or 'nothing'}")
    return 0


def command_status(arguments) -> int:
    """Print where each stage of the run stands."""
    from voc_pipeline.graph import STAGES, resolve_paths, status

    config = resolve_paths(config_from_arguments(arguments))
    statuses = status(config)
    print(f"run {config.run_name} in {config.run_dir}:")
    for stage in STAGES:
        print(f"  {stage.name:<10} {statuses[stage.name].describe()}")
    return 0


def command_kernel_build(arguments) -> int:
    """Write the wheel dataset, the notebook kernel and, with --trained, the run's dataset; local checks come before
    Kaggle is asked for the slug."""
    from voc_pipeline.kernel import bundle
    from voc_pipeline.kernel.competition import resolve_competition

    predicts_from_trained = bool(arguments.trained or arguments.from_kernel)
    # A notebook that predicts from trained models needs no download: its internet is off unless asked for.
    enable_internet = arguments.internet or not (arguments.no_internet or predicts_from_trained)
    experiments = tuple(arguments.experiments)
    assignments = tuple(arguments.assignments)
    bundle.check_build_arguments(arguments.output, arguments.username, tuple(arguments.weights_dataset), enable_internet,
                                 arguments.notes, experiments, arguments.trained, arguments.from_kernel, arguments.profile,
                                 assignments)
    bundle.build_bundle(arguments.output, arguments.username, resolve_competition(arguments.competition),
                        tuple(arguments.weights_dataset), not arguments.no_gpu, enable_internet, arguments.notes,
                        experiments, arguments.trained, arguments.from_kernel, arguments.training, arguments.profile,
                        assignments)
    return 0


def command_kernel_install_run(arguments) -> int:
    """Where the notebook runs: put a carried run into the runs folder and check the data is the run's."""
    from voc_pipeline.kernel.trained_run import install_run

    install_run(arguments.source, arguments.runs_dir, arguments.data)
    return 0


def command_kernel_pack_run(arguments) -> int:
    """Pack a trained run's files and manifest into a folder (a training kernel's output)."""
    from voc_pipeline.files import byte_size
    from voc_pipeline.kernel.trained_run import pack_run

    manifest = pack_run(arguments.run, arguments.output)
    print(f"run {manifest['run']} packed in {arguments.output}: {len(manifest['files'])} files, "
          f"{byte_size(manifest['bytes'])} (content sha256 {manifest['content_sha256'][:12]})")
    return 0


def command_compare(arguments) -> int:
    """Runs side by side: comparison.md and comparison.png in --output."""
    from voc_pipeline.comparison import compare_runs

    compare_runs(arguments.runs, arguments.output)
    return 0


def command_kernel_push(arguments) -> int:
    from voc_pipeline.kernel import client

    client.push_bundle(arguments.bundle, arguments.weights,
                       client.KaggleCli.ready(poll_seconds=arguments.poll, wait_seconds=arguments.timeout),
                       arguments.competition)
    return 0


def command_kernel_status(arguments) -> int:
    from voc_pipeline.kernel import client

    client.follow_kernel(arguments.bundle, arguments.kernel,
                         client.KaggleCli.ready(poll_seconds=arguments.poll, wait_seconds=arguments.timeout),
                         arguments.competition)
    return 0


def command_kernel_output(arguments) -> int:
    """Fetch and validate the kernel's output; against --data when given (a wrong --data is an error, not a
    silent format-only check), else against data found as for the stages, else for format only."""
    from voc_pipeline.data.competition import find_data_root
    from voc_pipeline.errors import DataError
    from voc_pipeline.kernel import client

    if arguments.data:
        test_root = find_data_root(arguments.data)
    else:
        try:
            test_root = find_data_root(None)
        except DataError:
            test_root = None
    client.fetch_kernel_output(arguments.bundle, arguments.runs_dir, test_root, arguments.kernel,
                               competition=arguments.competition)
    return 0


def command_kernel_stack(arguments) -> int:
    from voc_pipeline.kernel import stack

    python = stack.build_stack_environment(arguments.output or stack.STACK_ENVIRONMENT)
    print(f"Kaggle's stack: {python} (Python {stack.python_version_of(python)})")
    return 0


def command_kernel_check(arguments) -> int:
    from voc_pipeline.kernel import stack

    stack.check_kernel(arguments.bundle, arguments.data, tuple(arguments.assignments), arguments.profile, arguments.stack,
                       arguments.output)
    return 0


def command_kernel_submit(arguments) -> int:
    """Submit the pushed version's validated output to the competition and wait for its score."""
    from voc_pipeline.kernel import client

    client.submit_kernel_output(arguments.bundle, arguments.runs_dir, arguments.competition, arguments.message,
                                client.KaggleCli.ready(poll_seconds=arguments.poll, wait_seconds=arguments.timeout))
    return 0


def command_kernel_credentials(arguments) -> int:
    """Say which Kaggle credentials the client will use, or what is wrong with those present."""
    from voc_pipeline.errors import KernelError
    from voc_pipeline.kernel.credentials import check_credentials

    check = check_credentials()
    if not check.found:
        raise KernelError(check.explain())
    print(f"Kaggle credentials: {', '.join(check.found)} (by name only: no value is read out)")
    return 0


def command_data_download(arguments) -> int:
    """Download this year's competition data through the kaggle client, checked and unpacked."""
    from voc_pipeline.kernel.client import KaggleCli
    from voc_pipeline.kernel.competition import resolve_competition
    from voc_pipeline.kernel.download import download_competition_data

    cli = KaggleCli.ready()
    download_competition_data(arguments.directory, resolve_competition(arguments.competition, cli), cli)
    return 0


def command_kernel_weights(arguments) -> int:
    """Plan (and fetch, or verify) the ImageNet weight files of a profile."""
    from voc_pipeline.kernel import weights
    from voc_pipeline.kernel.bundle import preset_model_sources

    config = build_config(arguments.profile, arguments.assignments)
    plan = weights.plan_weights(config)
    for weight in plan:
        print(f"{weight.fname}  ({weight.used_by}; {weight.origin}{'; hash ' + weight.file_hash if weight.file_hash else ''})")
    presets = preset_model_sources(arguments.profile, tuple(arguments.assignments))
    for handle in presets:
        print(f"keras-hub preset {handle}  (a Kaggle model: `kernel build` attaches it as a model source; with internet "
              f"keras-hub downloads it itself)")
    if presets and not plan:
        return 0  # nothing to fetch into a weights dataset: the presets travel as Kaggle models
    if arguments.verify:
        missing = weights.missing_weights(config)
        if missing:
            from voc_pipeline.errors import KernelError

            raise KernelError(f"Keras's cache lacks {len(missing)} ImageNet weight files this profile needs: "
                              f"{', '.join(weight.fname for weight in missing)}")
        print(f"all {len(plan)} weight files are in Keras's cache")
        return 0
    from voc_pipeline.kernel.bundle import check_username

    check_username(arguments.username)  # it owns the weights dataset
    folder = weights.write_weights_dataset(plan, arguments.output, arguments.username, arguments.force)
    print(f"weights dataset in {folder}: upload it with `voc-pipeline kernel push --weights {folder}` and attach it "
          f"with `voc-pipeline kernel build --weights-dataset {arguments.username}/voc-pipeline-keras-weights`")
    return 0


def command_config(arguments) -> int:
    print(config_to_toml(config_from_arguments(arguments)), end="")
    return 0


def command_score(arguments) -> int:
    from voc_pipeline.data.submission import score_submission, test_root_for

    result = score_submission(arguments.solution, arguments.submission, test_root_for(arguments.solution, arguments.data))
    print(f"rows: {result['rows']}")
    print(f"classification: {result['classification']:.4f}")
    print(f"segmentation: {result['segmentation']:.4f}")
    print(f"score: {result['score']:.4f}")
    return 0


def command_validate(arguments) -> int:
    from voc_pipeline.data.competition import find_data_root
    from voc_pipeline.data.submission import validate_submission

    report = validate_submission(arguments.submission, find_data_root(arguments.data))
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{report.path}: {report.rows} rows, {'valid' if report.valid else f'{len(report.problems)} problems'}")
    return 0 if report.valid else 1


def command_prune(arguments) -> int:
    from voc_pipeline.data.output_folder import check_configured_output, count_files, prune_working_folder

    folder = Path(arguments.folder)
    check_configured_output(folder, build_config(arguments.profile, arguments.assignments).submit.output_dir,
                            arguments.force)
    deleted = prune_working_folder(folder, tuple(arguments.keep), dry_run=arguments.dry_run, force=arguments.force)
    if arguments.dry_run:
        print("\n".join(f"would delete {path}" for path in deleted) or "nothing would be deleted")
        return 0
    print(f"deleted {len(deleted)} entries; {count_files(folder)} files remain in {folder}")
    return 0


def command_bench(arguments) -> int:
    from voc_pipeline import bench

    bench.check_counts(arguments.images, arguments.repeats)
    if arguments.target == "submission":
        figures = bench.bench_submission(arguments.images or 750, arguments.repeats)
    elif arguments.target == "classifier":
        figures = bench.bench_classifier(config_from_arguments(arguments), arguments.images or 128)
    elif arguments.target == "segmenter":
        figures = bench.bench_segmenter(config_from_arguments(arguments), arguments.images or 64)
    elif arguments.target == "predict":
        figures = bench.bench_predict(config_from_arguments(arguments), arguments.images or 48)
    elif arguments.target == "features":
        figures = bench.bench_features(config_from_arguments(arguments), arguments.images or 32)
    elif arguments.target == "run-dataset":
        figures = bench.bench_run_dataset(config_from_arguments(arguments))
    elif arguments.target == "estimate":
        figures = bench.bench_estimate(config_from_arguments(arguments), predict_only=arguments.predict_only)
    else:
        figures = bench.bench_determinism(arguments.profile, tuple(arguments.assignments), arguments.repeats)
    if arguments.json:
        print(json.dumps(figures))
    return 0


COMPETITION_HELP = ("this year's competition slug, e.g. kul-computer-vision-ga-2-2026 (default: the KU Leuven "
                    "computer vision group assignment 2 competition among those you entered, asked from Kaggle)")


def build_parser() -> argparse.ArgumentParser:
    """The `voc-pipeline` parser: each command has a handler (set as the `handler` default) that main() calls."""
    parser = argparse.ArgumentParser(
        prog="voc-pipeline",
        description="Staged pipeline for the KU Leuven PASCAL VOC Kaggle competition "
                    "(20-class multi-label classification + semantic segmentation).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_commands = add_data_commands(commands)
    add_stage_commands(commands, data_commands)
    add_run_commands(commands)
    add_kernel_commands(commands)
    add_submission_commands(commands)
    add_bench_command(commands)
    return parser


def add_data_commands(commands) -> argparse._SubParsersAction:
    """`data demo`, `data from-voc` and `data download`; returns the `data` group, which also holds the data stage."""
    data = commands.add_parser("data", help="make or check data sets in the competition layout")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = data_commands.add_parser("demo", help="generate the synthetic demo data set")
    demo.add_argument("output", type=Path)
    demo.add_argument("--n-train", type=int, default=80)
    demo.add_argument("--n-test", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="replace an existing output folder")
    demo.set_defaults(handler=command_data_demo)
    from_voc = data_commands.add_parser("from-voc", help="convert a PASCAL VOC devkit folder")
    from_voc.add_argument("voc_root", type=Path)
    from_voc.add_argument("output", type=Path)
    from_voc.add_argument("--ids", type=Path, help="file of devkit ids to convert (default: ImageSets/Segmentation lists)")
    from_voc.add_argument("--test-fraction", type=float, default=0.2,
                          help="share held out as the test split, with solution.csv for local scoring (default 0.2)")
    from_voc.add_argument("--keep-void", action="store_true", help="keep 255 on object borders")
    from_voc.add_argument("--seed", type=int, default=0)
    from_voc.add_argument("--force", action="store_true", help="replace an existing output folder")
    from_voc.set_defaults(handler=command_data_from_voc)
    download = data_commands.add_parser("download", help="download the competition's data with the kaggle client, "
                                                         "check its layout and unpack it into DIR")
    download.add_argument("directory", type=Path, metavar="DIR")
    download.add_argument("--competition", metavar="SLUG", help=COMPETITION_HELP)
    download.set_defaults(handler=command_data_download)
    return data_commands


def add_stage_commands(commands, data_commands) -> None:
    """One command per stage of the graph: `data prepare` in the `data` group, the others at the top level."""
    from voc_pipeline.graph import STAGES

    for stage in STAGES:
        group = data_commands if stage.command[0] == "data" else commands
        stage_parser = group.add_parser(stage.command[-1], help=f"stage {stage.name}: {stage.summary}")
        add_config_arguments(stage_parser)
        stage_parser.set_defaults(handler=command_stage, stage=stage.name)


def add_run_commands(commands) -> None:
    """`run` (every stage up to --until that is not current) and `status`."""
    from voc_pipeline.graph import STAGE_NAMES

    run = commands.add_parser("run", help="run every stage up to --until that is not current (like make)")
    run.add_argument("--until", choices=STAGE_NAMES, default="evaluate",
                     help=f"the last stage to run (default: evaluate); in order: {', '.join(STAGE_NAMES)}")
    run.add_argument("--no-training", action="store_true",
                     help="never (re)run the stages the test predictions depend on (data to refit): they must be "
                          "current, e.g. a trained run carried to a notebook; stop at once otherwise")
    add_config_arguments(run)
    run.set_defaults(handler=command_run)
    status = commands.add_parser("status", help="show which stages of a run are current, stale or not run, and why")
    add_config_arguments(status)
    status.set_defaults(handler=command_status)


def add_kernel_commands(commands) -> None:
    """`kernel ACTION`: build the bundle; push, follow, fetch and submit it; credentials, weights, stack, check."""
    kernel = commands.add_parser("kernel", help="build, check or push the Kaggle notebook kernel")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    add_kernel_build_command(kernel_commands)
    add_kernel_loop_commands(kernel_commands)
    add_kernel_tool_commands(kernel_commands)


def add_kernel_build_command(kernel_commands) -> None:
    """`kernel build`."""
    from voc_pipeline.kernel.notes import allowed_names

    build = kernel_commands.add_parser("build", help="write the wheel dataset and the notebook kernel into a folder")
    build.add_argument("--output", type=Path, default=Path("kaggle/bundle"))
    build.add_argument("--username", required=True, help="your Kaggle user name (owner of the dataset and kernel)")
    build.add_argument("--competition", metavar="SLUG", help=COMPETITION_HELP)
    build.add_argument("--weights-dataset", action="append", default=[], metavar="OWNER/NAME",
                       help="a dataset with Keras ImageNet weight files to attach (repeatable)")
    build.add_argument("--no-gpu", action="store_true", help="run the kernel without a GPU (default: two T4s)")
    internet = build.add_mutually_exclusive_group()
    internet.add_argument("--no-internet", action="store_true",
                          help="turn the kernel's internet off (then --weights-dataset is required, unless --trained "
                               "or --from-kernel, whose internet is off already)")
    internet.add_argument("--internet", action="store_true",
                          help="leave internet on for a notebook that predicts from a trained run")
    build.add_argument("--profile", default="kaggle", help="the shipped profile a kernel that trains runs (default: "
                                                           "kaggle); a notebook predicting from a trained run takes the run's")
    build.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                       help="a configuration key the kernel that trains sets (repeatable)")
    trained = build.add_mutually_exclusive_group()
    trained.add_argument("--trained", type=Path, metavar="RUN",
                         help="predict and report from this run folder (it must have reached refit): its models and "
                              "decisions travel as a second dataset, and the notebook never trains")
    trained.add_argument("--from-kernel", metavar="OWNER/SLUG",
                         help="predict and report from the run a training kernel left as its output (make kaggle-train)")
    trained.add_argument("--training", action="store_true",
                         help="build the training kernel (OWNER/voc-pipeline-train) instead: it trains up to refit and "
                              "leaves the run as its output")
    build.add_argument("--notes", type=Path, metavar="DIR",
                       help=f"a folder of your Markdown notes, each put in the notebook where its name says: {allowed_names()}")
    build.add_argument("--experiments", nargs="+", default=[], type=Path, metavar="RUN",
                       help="run folders made elsewhere (e.g. runs/resnet): their configuration, metrics, reports and "
                            "figures travel in the dataset, compared in the notebook")
    build.set_defaults(handler=command_kernel_build)


def add_kernel_loop_commands(kernel_commands) -> None:
    """`kernel push`, `status`, `output` and `submit`: the round trip through Kaggle, in the order it is walked."""
    push = kernel_commands.add_parser("push", help="upload the datasets, wait until they are ready, push the kernel")
    push.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    push.add_argument("--weights", type=Path, help="also upload this weights dataset folder (from `kernel weights`)")
    push.add_argument("--poll", type=float, default=10.0, help="seconds between checks of a dataset's status")
    push.add_argument("--timeout", type=float, default=900.0, help="seconds to wait at most for a dataset to be ready")
    push.add_argument("--competition", metavar="SLUG", help="must be the one the bundle was built for (default: it)")
    push.set_defaults(handler=command_kernel_push)
    status = kernel_commands.add_parser("status", help="wait for the pushed kernel's run to end, showing its state")
    status.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    status.add_argument("--kernel", metavar="OWNER/SLUG", help="another kernel than the bundle's")
    status.add_argument("--poll", type=float, default=60.0, help="seconds between checks")
    status.add_argument("--timeout", type=float, default=12 * 3600.0, help="seconds to wait at most")
    status.add_argument("--competition", metavar="SLUG", help="must be the one the bundle was built for (default: it)")
    status.set_defaults(handler=command_kernel_status)
    output = kernel_commands.add_parser("output", help="download the kernel's output into runs/kaggle-<version>/ "
                                                       "and validate its submission")
    output.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    output.add_argument("--kernel", metavar="OWNER/SLUG", help="another kernel than the bundle's")
    output.add_argument("--runs-dir", type=Path, default=Path("runs"))
    output.add_argument("--data", help="competition data root to check the submission against (default: found)")
    output.add_argument("--competition", metavar="SLUG", help="must be the one the bundle was built for (default: it)")
    output.set_defaults(handler=command_kernel_output)
    submit = kernel_commands.add_parser("submit", help="submit the pushed version's validated submission.csv to the "
                                                       "competition, wait for its score, save kaggle_score.json")
    submit.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    submit.add_argument("--runs-dir", type=Path, default=Path("runs"))
    submit.add_argument("--competition", metavar="SLUG", help="must be the one the bundle was built for (default: it)")
    submit.add_argument("--message", "-m", help="the submission's description (default: the kernel and version)")
    submit.add_argument("--poll", type=float, default=15.0, help="seconds between checks of the submission's status")
    submit.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait at most for the score")
    submit.set_defaults(handler=command_kernel_submit)


def add_kernel_tool_commands(kernel_commands) -> None:
    """`kernel credentials`, `weights`, `stack` and `check`: what a push needs, checked on this machine."""
    credentials = kernel_commands.add_parser("credentials", help="say which Kaggle credentials the kaggle client "
                                                                 "will use, or what is wrong with those present")
    credentials.set_defaults(handler=command_kernel_credentials)
    weights = kernel_commands.add_parser("weights", help="list, fetch (with internet) or verify the ImageNet weight "
                                                         "files a profile needs, as a Kaggle dataset folder")
    weights.add_argument("--profile", default="kaggle")
    weights.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    weights.add_argument("--output", type=Path, default=Path("kaggle/bundle/weights"))
    weights.add_argument("--username", default="YOUR_KAGGLE_USERNAME", help="owner of the weights dataset")
    weights.add_argument("--force", action="store_true", help="replace an existing output folder")
    weights.add_argument("--verify", action="store_true", help="only check that Keras's cache holds every file")
    weights.set_defaults(handler=command_kernel_weights)
    stack_parser = kernel_commands.add_parser("stack", help="build .venv-kaggle from kaggle/image.toml (Kaggle's "
                                                            "Python, TensorFlow and Keras)")
    stack_parser.add_argument("--output", type=Path, help="the environment's folder (default: .venv-kaggle in the checkout)")
    stack_parser.set_defaults(handler=command_kernel_stack)
    check = kernel_commands.add_parser("check", help="execute the bundle's notebook in a Jupyter kernel (papermill) "
                                                     "against a simulated /kaggle tree; keep it and its HTML")
    check.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    check.add_argument("--data", type=Path, required=True, help="data root to mount as the competition input")
    check.add_argument("--profile", default="smoke")
    check.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    check.add_argument("--stack", choices=["kaggle", "local"], default="kaggle",
                       help="Kaggle's versions from kaggle/image.toml (default) or this environment's")
    check.add_argument("--output", type=Path, default=Path("kaggle/check"),
                       help="where the executed notebook and its HTML rendering are kept (default: kaggle/check)")
    check.set_defaults(handler=command_kernel_check)
    install = kernel_commands.add_parser("install-run", help="where the notebook runs: put a carried run (its files "
                                                             "checked) into --runs-dir and check the data is the run's")
    install.add_argument("source", type=Path, help="the folder holding the carried run's voc-pipeline-run.json")
    install.add_argument("--runs-dir", type=Path, required=True)
    install.add_argument("--data", type=Path, required=True, help="the competition data root the run must have been "
                                                                   "trained on")
    install.set_defaults(handler=command_kernel_install_run)
    pack = kernel_commands.add_parser("pack-run", help="pack a run that has reached refit (its models, decisions, "
                                                       "histories and records) into a folder, as a training kernel's output")
    pack.add_argument("run", type=Path, help="the run folder")
    pack.add_argument("--output", type=Path, required=True)
    pack.set_defaults(handler=command_kernel_pack_run)


def add_submission_commands(commands) -> None:
    """`compare`, `config`, `score`, `validate` and `prune`: looking at runs and submissions, and tidying up."""
    compare = commands.add_parser("compare", help="runs side by side (configuration differences, validation scores, "
                                                  "training time): comparison.md and comparison.png")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders, e.g. runs/a runs/b; the first "
                                                                           "is the reference")
    compare.add_argument("--output", type=Path, required=True, metavar="DIR")
    compare.set_defaults(handler=command_compare)
    config = commands.add_parser("config", help="print the resolved configuration as TOML")
    add_config_arguments(config)
    config.set_defaults(handler=command_config)
    score = commands.add_parser("score", help="score a submission against a solution CSV")
    score.add_argument("solution", type=Path)
    score.add_argument("submission", type=Path)
    score.add_argument("--data", help="data root whose test set the submission must fit (default: the solution's "
                                      "folder when it holds test/, else found as for the stages)")
    score.set_defaults(handler=command_score)
    validate = commands.add_parser("validate", help="check a submission against the test set; non-zero exit on any problem")
    validate.add_argument("submission", type=Path)
    validate.add_argument("--data", help="data root holding test/ (default: found as for the stages)")
    validate.set_defaults(handler=command_validate)
    prune = commands.add_parser("prune", help="delete all but kept entries of a folder (Kaggle's 500-file limit)")
    prune.add_argument("folder", type=Path)
    prune.add_argument("--keep", action="append", default=[], metavar="PATTERN", help="glob of entries to keep")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    prune.add_argument("--force", action="store_true",
                       help="prune a folder that is not the configured output folder, or holds .git or pyproject.toml")
    prune.add_argument("--profile", help="configuration profile whose submit.output_dir is the folder to prune")
    prune.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    prune.set_defaults(handler=command_prune)


def add_bench_command(commands) -> None:
    """`bench TARGET`: speed figures measured on this machine."""
    bench = commands.add_parser("bench", help="print speed figures measured on this machine")
    bench.add_argument("target", choices=["submission", "classifier", "segmenter", "predict", "determinism", "estimate",
                                          "run-dataset", "features"])
    bench.add_argument("--predict-only", action="store_true",
                       help="estimate: only what a notebook predicting from a trained run runs (predictions, the attack)")
    bench.add_argument("--images", type=int, default=None, help="images to process (default: 750 for submission, 128 otherwise)")
    add_config_arguments(bench)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    bench.set_defaults(handler=command_bench)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that every `finally` runs and removes its temporary files."""


def raise_interrupted(signal_number, frame):
    raise Interrupted(signal_number)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=arguments.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("voc_pipeline").setLevel(arguments.log_level)
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        with quiet_tensorflow(arguments.log_level):
            return arguments.handler(arguments)
    except VocPipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        terminated = isinstance(interruption, Interrupted)
        print(f"error: {'terminated (SIGTERM)' if terminated else 'interrupted'}: the running stage did not finish "
              f"and left no partial file; it reruns next time (an interrupted training resumes)", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    raise SystemExit(main())
