"""The `voc-pipeline` command line. It only parses arguments and calls the stage functions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from voc_pipeline import __version__
from voc_pipeline.config import apply_overrides, available_profiles, build_config, config_to_toml, validate_config
from voc_pipeline.errors import VocPipelineError

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

    outcomes = run_until(config_from_arguments(arguments), arguments.until, force=arguments.force)
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


def command_kernel(arguments) -> int:
    from voc_pipeline import kernel

    if arguments.kernel_command == "build":
        kernel.build_bundle(arguments.output, arguments.username, arguments.competition, tuple(arguments.weights_dataset),
                            not arguments.no_gpu, arguments.internet)
    elif arguments.kernel_command == "push":
        kernel.push_bundle(arguments.bundle)
    else:
        kernel.check_kernel(arguments.bundle, arguments.data, tuple(arguments.assignments), arguments.profile)
    return 0


def command_config(arguments) -> int:
    print(config_to_toml(config_from_arguments(arguments)), end="")
    return 0


def command_score(arguments) -> int:
    from voc_pipeline.data.submission import score_submission

    result = score_submission(arguments.solution, arguments.submission)
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
    from voc_pipeline.data.output_folder import count_files, prune_working_folder

    deleted = prune_working_folder(arguments.folder, tuple(arguments.keep))
    print(f"deleted {len(deleted)} entries; {count_files(Path(arguments.folder))} files remain in {arguments.folder}")
    return 0


def command_bench(arguments) -> int:
    from voc_pipeline import bench

    if arguments.target == "submission":
        figures = bench.bench_submission(arguments.images or 750, arguments.repeats)
    elif arguments.target == "classifier":
        figures = bench.bench_classifier(config_from_arguments(arguments), arguments.images or 128)
    elif arguments.target == "segmenter":
        figures = bench.bench_segmenter(config_from_arguments(arguments), arguments.images or 64)
    elif arguments.target == "predict":
        figures = bench.bench_predict(config_from_arguments(arguments), arguments.images or 48)
    else:
        figures = bench.bench_determinism(arguments.profile, tuple(arguments.assignments), arguments.repeats)
    if arguments.json:
        print(json.dumps(figures))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from voc_pipeline.graph import STAGE_NAMES, STAGES

    parser = argparse.ArgumentParser(
        prog="voc-pipeline",
        description="Staged pipeline for the KU Leuven PASCAL VOC Kaggle competition "
                    "(20-class multi-label classification + semantic segmentation).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    from_voc.add_argument("--test-fraction", type=float, default=0.0,
                          help="share held out as the test split, with solution.csv for local scoring")
    from_voc.add_argument("--keep-void", action="store_true", help="keep 255 on object borders")
    from_voc.add_argument("--seed", type=int, default=0)
    from_voc.add_argument("--force", action="store_true", help="replace an existing output folder")
    from_voc.set_defaults(handler=command_data_from_voc)
    for stage in STAGES:
        group = data_commands if stage.command[0] == "data" else commands
        stage_parser = group.add_parser(stage.command[-1], help=f"stage {stage.name}: {stage.summary}")
        add_config_arguments(stage_parser)
        stage_parser.set_defaults(handler=command_stage, stage=stage.name)

    run = commands.add_parser("run", help="run every stage up to --until that is not current (like make)")
    run.add_argument("--until", choices=STAGE_NAMES, default="evaluate",
                     help=f"the last stage to run (default: evaluate); in order: {', '.join(STAGE_NAMES)}")
    add_config_arguments(run)
    run.set_defaults(handler=command_run)

    status = commands.add_parser("status", help="show which stages of a run are current, stale or not run, and why")
    add_config_arguments(status)
    status.set_defaults(handler=command_status)

    kernel = commands.add_parser("kernel", help="build, check or push the Kaggle notebook kernel")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    build = kernel_commands.add_parser("build", help="write the wheel dataset and the notebook kernel into a folder")
    build.add_argument("--output", type=Path, default=Path("kaggle/bundle"))
    build.add_argument("--username", required=True, help="your Kaggle user name (owner of the dataset and kernel)")
    build.add_argument("--competition", default="kul-h02a5a-computer-vision-ga2-2022", help="competition slug")
    build.add_argument("--weights-dataset", action="append", default=[], metavar="OWNER/NAME",
                       help="a dataset with Keras ImageNet weight files to attach (repeatable)")
    build.add_argument("--no-gpu", action="store_true", help="run the kernel without a GPU")
    build.add_argument("--internet", action="store_true", help="enable internet in the kernel")
    build.set_defaults(handler=command_kernel)
    push = kernel_commands.add_parser("push", help="upload the bundle with the official kaggle CLI")
    push.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    push.set_defaults(handler=command_kernel)
    check = kernel_commands.add_parser("check", help="run the bundle's kernel against a simulated /kaggle tree")
    check.add_argument("--bundle", type=Path, default=Path("kaggle/bundle"))
    check.add_argument("--data", type=Path, required=True, help="data root to mount as the competition input")
    check.add_argument("--profile", default="smoke")
    check.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    check.set_defaults(handler=command_kernel)

    config = commands.add_parser("config", help="print the resolved configuration as TOML")
    add_config_arguments(config)
    config.set_defaults(handler=command_config)

    score = commands.add_parser("score", help="score a submission against a solution CSV")
    score.add_argument("solution", type=Path)
    score.add_argument("submission", type=Path)
    score.set_defaults(handler=command_score)

    validate = commands.add_parser("validate", help="check a submission against the test set; non-zero exit on any problem")
    validate.add_argument("submission", type=Path)
    validate.add_argument("--data", help="data root holding test/ (default: found as for the stages)")
    validate.set_defaults(handler=command_validate)

    prune = commands.add_parser("prune", help="delete all but kept entries of a folder (Kaggle's 500-file limit)")
    prune.add_argument("folder", type=Path)
    prune.add_argument("--keep", action="append", default=[], metavar="PATTERN", help="glob of entries to keep")
    prune.set_defaults(handler=command_prune)

    bench = commands.add_parser("bench", help="print speed figures measured on this machine")
    bench.add_argument("target", choices=["submission", "classifier", "segmenter", "predict", "determinism"])
    bench.add_argument("--images", type=int, default=None, help="images to process (default: 750 for submission, 128 otherwise)")
    add_config_arguments(bench)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    bench.set_defaults(handler=command_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=arguments.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return arguments.handler(arguments)
    except VocPipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
