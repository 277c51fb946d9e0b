"""The parts of the handed-in notebook, rendered from a run folder's files at run time.

Every sentence that describes what a run did (its profile, backbones, sizes, losses, epochs, what `tune`
chose and what it beat, the attack's budgets and success rates) is written here from the run's own files,
so the notebook cannot say something its run did not do. A part is a list of blocks: Markdown text, or a
`Figure` (a PNG of the run with its title). The kernel displays them in order; evaluate's `report.md` uses
the same tables. No TensorFlow is imported here: the notebook's own process never loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from voc_pipeline import artifacts, markdown
from voc_pipeline.backbone_table import backbone
from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.core.fusion import FLAG_SOURCES, SOURCE_TITLES
from voc_pipeline.errors import OutputFolderError
from voc_pipeline.files import byte_size


@dataclass(frozen=True)
class Figure:
    """A PNG to show inline, with the title shown above it."""

    path: Path
    title: str


Block = str | Figure


# ---------------------------------------------------------------- tables shared with evaluate's report.md


def score_table(rows: dict[str, dict[str, float]]) -> str:
    """The competition score of each answer: overall, classification rows, segmentation rows."""
    return markdown.table(("answer", "overall", "classification rows", "segmentation rows"),
                          [(name, row["score"], row["classification"], row["segmentation"]) for name, row in rows.items()])


def flag_sources_of(tuning: dict) -> tuple[dict[str, float], str]:
    """(each flag source tune tried -> its cross-validated classification, the chosen source)."""
    # Runs tuned before the presence source name the comparison "fusion".
    figures = tuning.get("flag_sources", tuning.get("fusion", {}))
    scores = {source: figures[f"{source}_cross_validated"] for source in FLAG_SOURCES
              if figures.get(f"{source}_cross_validated") is not None}
    return scores, figures.get("chosen", "classifier")


def flag_sources_text(tuning: dict) -> str:
    """One sentence: which sources the flags could come from, how each did, and the chosen one."""
    scores, chosen = flag_sources_of(tuning)
    if len(scores) < 2:
        return f"Flags from the {SOURCE_TITLES[chosen]}: no other source was tried (joint.presence, joint.fusion)."
    return ("Flag sources, cross-validated classification on validation: "
            + ", ".join(f"{SOURCE_TITLES[source]} {score:.4f}" for source, score in scores.items())
            + f"; flags from the **{SOURCE_TITLES[chosen]}** (the simplest within the noise of the best).")


def choices_section(tuning: dict, candidates_shown: int = 10) -> list[str]:
    """What tune chose on validation, and what it was chosen against (tune's metrics)."""
    scales = tuning["scales"]
    scale_table = markdown.table(("segmenter scales", "validation Dice of its own masks", "seconds per image"),
                                 [(name, f"{row['segmentation_dice']:.4f}", f"{row['seconds_per_image']:.3f}")
                                  for name, row in scales["options"].items()])
    fusion_text = flag_sources_text(tuning)
    candidates = sorted(tuning["joint"]["candidates"], key=lambda row: -row["score"])
    rule_table = markdown.table(("joint rule", "overall", "classification", "segmentation"),
                                [(row["name"], row["score"], row["classification"], row["segmentation"])
                                 for row in candidates[:candidates_shown]])
    return [f"Scales used: {', '.join(f'{scale:g}' for scale in scales['chosen'])}.", scale_table, fusion_text,
            f"Joint rule: **{tuning['joint']['chosen']}**, the best of {len(candidates)} candidates "
            f"(the {min(candidates_shown, len(candidates))} best):", rule_table]


# ---------------------------------------------------------------- the run's figures, one list for the notebook and report.md

# (artifact, title): each part shows its own; evaluate's report.md links them all. Patterns with "*" find every
# fold's curves of a K-fold classifier.
CLASSIFIER_FIGURES = ((artifacts.CLASSIFIER_CURVES, "Classifier learning curves"),
                      (artifacts.refit_curves("classifier"), "Classifier refit on every labelled image: learning curves"),
                      (artifacts.CLASSIFIER_PER_CLASS, "Classifier per class: average precision, and F1 before and after tuning"),
                      (artifacts.RELIABILITY, "Calibration of both heads on validation"),
                      (artifacts.CLASSIFIER_AUGMENTED, "Classifier training images with copy-paste, and their flags"))
SEGMENTER_FIGURES = ((artifacts.SEGMENTER_CURVES, "Segmenter learning curves"),
                     (artifacts.refit_curves("segmenter"), "Segmenter refit on every labelled image: learning curves"),
                     (artifacts.SEGMENTER_PER_CLASS, "Segmenter IoU per class"),
                     (artifacts.SEGMENTER_OVERLAYS, "Validation images: truth and prediction"),
                     (artifacts.SEGMENTER_AUGMENTED, "Segmenter training images with copy-paste, and their masks"))
JOINT_FIGURES = ((artifacts.SCORE_COMPARISON, "Competition score on validation"),
                 (artifacts.WORST_IMAGES, "The validation images the chosen rule scores worst"),
                 (artifacts.PIXEL_CONFUSION, "Pixel confusion of the chosen rule on validation"))
ATTACK_FIGURES = ((artifacts.ATTACK_SUCCESS_PLOT, "Success rate against the budget (dashed: with the defence)"),
                  (artifacts.ATTACK_CLASSIFIER_EXAMPLES, "Classifier: original, amplified perturbation, adversarial image"),
                  (artifacts.ATTACK_SEGMENTER_EXAMPLES, "Segmenter: clean and attacked masks"))
REPORT_FIGURES = (*CLASSIFIER_FIGURES, *SEGMENTER_FIGURES, *JOINT_FIGURES)


def figures(run_dir: Path, items) -> list[Figure]:
    """The figures among `items` ((artifact, title) pairs) that the run wrote, each file once."""
    found = []
    for artifact, title in items:
        paths = artifact.files(run_dir)
        found += [Figure(path, title + (f" ({path.stem})" if len(paths) > 1 else "")) for path in paths]
    return found


# ---------------------------------------------------------------- how each head was trained, from what its training recorded


def epochs_text(run_dir: Path, history: artifacts.Artifact) -> str:
    """'4 epochs (head 2, finetune 2)' from the training histories of `history` (one per fold)."""
    histories = [artifacts.read_history(run_dir, path.name, history.stage) for path in history.files(run_dir)]
    if not histories:
        return "no training history"
    phases: dict[str, int] = {}
    for row in histories[0]:
        phases[row["phase"]] = phases.get(row["phase"], 0) + 1
    folds = f" per fold ({len(histories)} folds)" if len(histories) > 1 else ""
    return (f"{count(len(histories[0]), 'epoch')}{folds} ("
            + ", ".join(f"{'from random weights, all layers' if phase == 'full' else phase} {count}"
                        for phase, count in phases.items()) + ")")


def count(number: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def segmenter_design(manifest: dict, config: dict) -> str:
    """The segmenter's architecture in a sentence, by the head its backbone carries (voc_pipeline.backbone_table)."""
    name, size = manifest["backbone"], manifest["image_size"]
    head = backbone(name).segmenter_head
    if head == "tokens":
        return (f"`{name}`'s patch tokens on their grid (stride {backbone(name).size_multiple}) at {size} px, batch norm "
                f"and a 1x1 convolution to 21 logits, upsampled bilinearly to the input size.")
    if head == "segformer":
        return (f"SegFormer `{name}` at {size} px: its MiT encoder and all-MLP decoder, then dropout and a 1x1 "
                f"convolution to 21 logits at stride 4, upsampled bilinearly to the input size.")
    return (f"DeepLabV3+ on `{name}` (width {config['width_multiplier']:g}) at {size} px, output stride "
            f"{manifest['output_stride']}: ASPP with {config['aspp_filters']} filters, a decoder of "
            f"{config['decoder_filters']} filters fusing stride-4 features.")


def training_text(facts: dict) -> str:
    """How a head was trained, from the record its training wrote (`heads.training_facts`): what it started from,
    each phase's epochs, rates and trainable layers, and what fine-tuning kept frozen."""
    phases = {phase["phase"]: phase for phase in facts["phases"]}
    patience = facts["early_stopping_patience"]
    stopping = (f" Early stopping after {count(patience, 'epoch')} without improvement." if patience
                else " Every epoch runs and the last is kept.")
    if "full" in phases:
        full = phases["full"]
        return (f"From {facts['initial_weights']}, every layer trains from the start: "
                f"{count(full['epochs'], 'planned epoch')} at learning rate {full['learning_rate']:g} with "
                f"{count(full['warmup_epochs'], 'warm-up epoch')} and cosine decay.{stopping}")
    head = phases["head"]
    if facts.get("cached_features"):
        return (f"From {facts['initial_weights']}, the encoder frozen throughout: {count(head['epochs'], 'epoch')} of "
                f"the head alone (learning rate {head['learning_rate']:g}), on the encoder's features of each training "
                f"image and of its mirror image, computed once and cached.{stopping}")
    text = (f"From {facts['initial_weights']}, in phases: {count(head['epochs'], 'epoch')} of the head alone on the "
            f"frozen backbone (learning rate {head['learning_rate']:g})")
    finetune = phases.get("finetune")
    if finetune is None:
        return text + "; the backbone is never fine-tuned." + stopping
    return (text + f", then {count(finetune['epochs'], 'epoch')} with {finetune['trainable_backbone_layers']} of the "
            f"backbone's {finetune['backbone_layers']} layers trainable (learning rate {finetune['learning_rate']:g}, "
            f"{count(finetune['warmup_epochs'], 'warm-up epoch')}, cosine decay); {facts['fine_tuning_keeps_frozen']}."
            + stopping)


# ---------------------------------------------------------------- the parts


def data_part(run_dir: Path) -> list[Block]:
    """The data as the data stage found it: sizes, images per class, the split."""
    summary = artifacts.read_json(artifacts.DATA_SUMMARY, run_dir)
    config = artifacts.read_config(run_dir)
    train, test = summary["train"], summary["test"]
    counts = train["images_per_class"]
    ordered = sorted(CLASS_NAMES, key=lambda name: -counts.get(name, 0))
    text = (f"{train['images']} training images (heights {train['height_range'][0]} to {train['height_range'][1]} px, "
            f"widths {train['width_range'][0]} to {train['width_range'][1]} px) and {test['images']} test images. "
            f"{summary['validation_split']} training images ({config['data']['validation_fraction']:.0%}, stratified on the "
            f"classes) are held out for validation; the models learn from the other {summary['train_split']}. "
            f"The most frequent class is {ordered[0]} ({counts[ordered[0]]} images), the rarest {ordered[-1]} "
            f"({counts[ordered[-1]]}); images without any class: {train['images_without_class']}; images with void pixels: "
            f"{train['void_images']}; images whose CSV row disagrees with their mask: {train['label_mask_disagreements']}.")
    table = markdown.table(("class", *CLASS_NAMES[:10]), [("images", *(counts.get(name, 0) for name in CLASS_NAMES[:10]))]) \
        + "\n\n" + markdown.table(("class", *CLASS_NAMES[10:]), [("images", *(counts.get(name, 0) for name in CLASS_NAMES[10:]))])
    return [text, "Training images per class:", table]


def classification_part(run_dir: Path) -> list[Block]:
    """Part 1: the classifier's design, its training, its thresholds, its figures."""
    config = artifacts.read_config(run_dir)["classifier"]
    manifest = artifacts.read_json(artifacts.CLASSIFIER_MANIFEST, run_dir)
    facts = artifacts.read_training_facts(artifacts.CLASSIFIER_MANIFEST, run_dir)
    metrics = artifacts.read_metrics(run_dir, "train-cls")
    tuning = artifacts.read_metrics(run_dir, "tune")["thresholds"]
    validation = (f"{len(manifest['models'])} models, one per fold, each validated on the images it did not see, and "
                  f"averaged" if manifest.get("validation") != "holdout" else "one model, validated on the held-out images")
    pooling = ("its class token next to the mean of its patch tokens" if backbone(manifest["backbone"]).classifier_head
               == "tokens" else "global average pooling")
    design = (f"Backbone `{manifest['backbone']}` at {manifest['image_size']} px, {pooling}, "
              f"dropout {config['dropout']:g} and 20 sigmoid outputs: an image can hold several classes, so "
              f"each class gets its own probability (never a softmax). Loss `{manifest['loss']}`, batch {config['batch_size']}, "
              f"weight decay {config['weight_decay']:g}. {training_text(facts)} Trained: "
              f"{epochs_text(run_dir, artifacts.CLASSIFIER_HISTORY)}; {validation}.")
    result = (f"Validation mAP {metrics['mean_average_precision']:.4f}, with flip test-time augmentation "
              f"{metrics['mean_average_precision_flip_tta']:.4f} (tune used the "
              f"{'flipped' if tuning['chosen'] == 'flip_tta' else 'plain'} probabilities).")
    thresholds = ("A classification row scores the F1 of the image's 20 flags, so the flags are chosen for the mean "
                  "per-image F1 and every image keeps at least its most probable class. Three strategies compete: one "
                  "global threshold; each image's expected-F1 set under probabilities calibrated by one temperature; "
                  "one threshold per class. Each is fitted on half of the validation images and scored on the other, "
                  "over repeated splits, and the simplest one within one standard error of the best is kept "
                  f"(here: **{tuning.get('strategy', 'global')}**). Classification score on validation by strategy:")
    return [design, result, "### Flags", thresholds, artifacts.THRESHOLD_COMPARISON.require(run_dir).read_text().strip(),
            *figures(run_dir, CLASSIFIER_FIGURES)]


def segmentation_part(run_dir: Path) -> list[Block]:
    """Part 2: the segmenter's design, its training and its figures."""
    config = artifacts.read_config(run_dir)["segmenter"]
    manifest = artifacts.read_json(artifacts.SEGMENTER_MANIFEST, run_dir)
    facts = artifacts.read_training_facts(artifacts.SEGMENTER_MANIFEST, run_dir)
    metrics = artifacts.read_metrics(run_dir, "train-seg")
    loss = "cross-entropy" + (f" plus {config['dice_weight']:g} x a soft Dice term" if config["dice_weight"] else "")
    design = (f"{segmenter_design(manifest, config)} Images are letterboxed "
              f"(padding ignored by the loss), training crops scaled by {config['scale_range'][0]:g} to "
              f"{config['scale_range'][1]:g}; loss {loss}, batch {config['batch_size']}. {training_text(facts)} "
              f"Trained: {epochs_text(run_dir, artifacts.SEGMENTER_HISTORY)}. Probabilities are resized to each image's "
              f"own size before any decision.")
    result = (f"Validation mIoU {metrics['mean_iou']:.4f} (without flip TTA {metrics['mean_iou_without_flip_tta']:.4f}); its "
              f"own masks score a segmentation-row Dice of {metrics['segmentation_dice']:.4f} (an all-background answer "
              f"{metrics['all_background_dice']:.4f}).")
    iou = metrics["iou_per_class"]
    fmt = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    names = ["background", *CLASS_NAMES]
    table = "\n\n".join(markdown.table(("IoU", *names[start:start + 7]), [("validation", *(fmt(iou.get(name)) for name in names[start:start + 7]))])
                        for start in range(0, len(names), 7))
    return [design, result, "IoU per class on validation ('-': the class is in no validation image):", table,
            *figures(run_dir, SEGMENTER_FIGURES)]


def joint_part(run_dir: Path) -> list[Block]:
    """How both heads decide together: tune's choices, the competition score, the worst images, the confusion."""
    tuning = artifacts.read_metrics(run_dir, "tune")
    evaluation = artifacts.read_metrics(run_dir, "evaluate")
    intro = (f"The classifier's flags and the segmenter's masks are reconciled by a rule chosen on the "
             f"{evaluation['validation_images']} validation images by the competition score itself; every option is kept "
             f"only if it wins there.")
    estimate = tuning["joint"].get("estimate") or {}
    if estimate.get("fell_back"):
        intro += (f" **The trivial answer wins here**: the most frequent class with a centre box scores "
                  f"{estimate['trivial']:.4f} on validation, above the chosen rule's honest estimate {estimate['score']:.4f}, "
                  f"so the submission falls back to it.")
    return [intro, *choices_section(tuning), "Competition score on validation:", score_table(evaluation["scores"]),
            *figures(run_dir, JOINT_FIGURES), *self_training_part(run_dir)]


def self_training_part(run_dir: Path) -> list[Block]:
    """With self_training.rounds: that the test images were pseudo-labelled and trained on, how many, how right such
    labels were on validation, and whether the self-trained models won there; nothing when it was off."""
    manifest = artifacts.read_self_training(Path(run_dir))
    if not manifest.get("rounds"):
        return []
    # The last round that trained (a later one may have found no image to pseudo-label, and stopped).
    last = next((round_ for round_ in reversed(manifest["per_round"]) if round_["pseudo_labelled"]), manifest["per_round"][-1])
    quality = last["on_validation"]
    scores = manifest["validation_score"]
    trained_on = f" and trained on, beside the {manifest['fit_images']} fit images" if manifest.get("rounds_trained") else ""
    text = (f"**Self-training on the test images** (`self_training.rounds = {manifest['rounds']}`, "
            f"{count(manifest['rounds_run'], 'round')} run): the test images where both heads agreed confidently were pseudo-labelled from the models' own "
            f"predictions{trained_on}, with no test label involved. "
            f"Round {last['round']} pseudo-labelled {last['pseudo_labelled']} of {last['test_images']} test images")
    if last["pseudo_labelled"]:
        text += (f" ({last['classes_per_image']} classes per image, {last['labelled_pixel_share']:.0%} of their pixels "
                 f"labelled, the rest ignored)")
        text += (f"; on validation images the same rule picks {quality['images']}, with flags of F1 {quality['flags_f1']} "
                 f"and pixel labels {quality['pixel_accuracy']} right (optimistic: these images also chose the "
                 f"thresholds)" if quality["images"] else
                 "; on validation images the same rule picks none")
    text += ". "
    if "self_trained" in scores:
        verdict = ("kept: the test predictions are the self-trained models'" if manifest["kept"] else
                   "not kept (no win beyond the noise): the first models predict the test set")
        text += (f"Validation score of the self-trained models {scores['self_trained']:.4f}, of the first models "
                 f"{scores['first']:.4f}: self-training {verdict}.")
    else:
        text += "No test image passed the thresholds chosen on validation, so nothing was trained."
    return [text, *figures(run_dir, ((artifacts.PSEUDO_LABELS, "Pseudo-labelled test images (unsure pixels in cream, ignored by the loss)"),))]


def attack_part(run_dir: Path) -> list[Block]:
    """Part 3: the attack on this run's own models, its table, its panels, the defence and what it found."""
    settings = artifacts.read_config(run_dir)["attack"]
    summary = artifacts.read_metrics(run_dir, "attack")
    rows = artifacts.read_attack_rows(run_dir)
    goal = (f"Goal: find how small an L-infinity perturbation (in pixel levels, 0..255) changes what this run's own models "
            f"say about {summary['images']} validation images, whether a cheap defence (bit-depth reduction to "
            f"{settings['defence_bits']} bits) restores it, and what that defence costs on clean images. Attacks: FGSM and "
            f"PGD ({settings['pgd_steps']} steps) at budgets {', '.join(f'{epsilon:g}' for epsilon in settings['epsilons'])}; "
            f"on the classifier untargeted (change any flag) and targeted (make {settings['target_class']} appear, make the "
            f"top class disappear); on the segmenter targeted (paint every pixel {settings['target_class']}). Success is "
            f"the share of images (classifier) or pixels (segmenter) where the attack reached its goal.")
    pgd = [row for row in rows if row["method"] == "PGD"]
    table = markdown.table(("model", "attack", "epsilon", "defence", "success", "clean score", "attacked score"),
                           [(row["model"], row["attack"], f"{row['epsilon']:g}", row["defence"], f"{row['success_rate']:.0%}",
                             f"{row['clean_score']:.3f}", f"{row['adversarial_score']:.3f}") for row in pgd])
    found = summary.get("findings", [])
    return [goal, "PGD, every budget, with and without the defence (FGSM rows are in attack/attack.csv):", table,
            "What the attack found:\n\n" + "\n".join(f"- {finding}" for finding in found),
            *figures(run_dir, ATTACK_FIGURES)]


def gain_row(choice: str, decided_by: str, kept: str, kept_value: float, alternative: str, alternative_value: float,
             measure: str) -> tuple:
    return (choice, decided_by, kept, alternative, measure, f"{kept_value:.4f}", f"{alternative_value:.4f}",
            f"{kept_value - alternative_value:+.4f}")


def findings_rows(run_dir: Path) -> list[tuple]:
    """What each choice gained over its alternative on validation, from the run's measured figures."""
    tuning = artifacts.read_metrics(run_dir, "tune")
    evaluation = artifacts.read_metrics(run_dir, "evaluate")
    segmenter = artifacts.read_metrics(run_dir, "train-seg")
    scores = evaluation["scores"]
    joint_name = next(name for name in scores if name.startswith("joint rule"))
    baseline_name = next(iter(scores))
    thresholds = tuning["thresholds"]
    kind = thresholds["chosen"]
    chosen = thresholds[kind]
    strategy = chosen["chosen_strategy"]
    key = strategy.replace("-", "_")
    # The alternative shown is the best of the strategies not chosen, cross-validated.
    other_key = max((other for other in ("global", "expected_f1", "per_class") if other != key
                     and f"{other}_cross_validated" in chosen), key=lambda other: chosen[f"{other}_cross_validated"])
    rows = [
        gain_row("the whole answer", "result", joint_name, scores[joint_name]["score"], baseline_name,
                 scores[baseline_name]["score"], "competition score"),
        gain_row("joint rule", "validation", evaluation["joint_rule"], scores[joint_name]["score"], "independent heads",
                 scores["independent heads"]["score"], "competition score"),
        gain_row("flag strategy", "cross-validation", f"{strategy} flags", chosen[f"{key}_cross_validated"],
                 f"{other_key.replace('_', '-')} flags", chosen[f"{other_key}_cross_validated"],
                 "classification, cross-validated"),
        gain_row("tuned flags", "always", f"{strategy} flags", chosen[key], "0.5 for every class",
                 chosen["threshold_0.5"], "classification"),
    ]
    other_kind = "plain" if kind == "flip_tta" else "flip_tta"
    if other_kind in thresholds:
        rows.append(gain_row("classifier flip TTA", "configuration", kind.replace("flip_tta", "flip TTA"),
                             chosen[f"{key}_cross_validated"], other_kind.replace("flip_tta", "flip TTA"), thresholds[other_kind][f"{key}_cross_validated"],
                             "classification, cross-validated"))
    rows.append(gain_row("segmenter flip TTA", "configuration", "flip TTA", segmenter["mean_iou"], "no flip",
                         segmenter["mean_iou_without_flip_tta"], "segmenter mIoU"))
    sources, chosen_source = flag_sources_of(tuning)
    if len(sources) > 1 and chosen_source in sources:
        # The chosen source against the best of the others.
        other = max((source for source in sources if source != chosen_source), key=sources.get)
        rows.append(gain_row("flags from", "cross-validation", SOURCE_TITLES[chosen_source], sources[chosen_source],
                             SOURCE_TITLES[other], sources[other], "classification, cross-validated"))
    options = tuning["scales"]["options"]
    chosen_scales = ", ".join(f"{scale:g}" for scale in tuning["scales"]["chosen"])
    for name, option in options.items():
        if name != chosen_scales and chosen_scales in options:
            rows.append(gain_row("segmenter scales", "validation", chosen_scales, options[chosen_scales]["segmentation_dice"],
                                 name, option["segmentation_dice"], "segmenter's own masks, Dice"))
    return rows


def findings_part(run_dir: Path) -> list[Block]:
    """Part 4: what each choice gained over its alternative on validation, and the attack's defence in one line."""
    table = markdown.table(("choice", "decided by", "kept", "alternative", "measured as", "kept", "alternative", "gain"),
                           findings_rows(run_dir))
    blocks: list[Block] = ["Each choice the run made, next to its alternative, measured on the validation images. A choice "
                           "decided by validation or cross-validation won there; one fixed by the configuration can show "
                           "a negative gain, which is a finding in itself:", table]
    submit = artifacts.read_metrics(run_dir, "submit")
    if submit.get("local_score"):
        local = submit["local_score"]
        blocks.append(f"The test set's true answers were available to this run (`solution.csv`): the submission scores "
                      f"{local['score']:.4f} on them (classification {local['classification']:.4f}, segmentation "
                      f"{local['segmentation']:.4f}), the honest figure, since thresholds and the joint rule were chosen "
                      f"on the validation images.")
    else:
        blocks.append("The validation figures are optimistic: thresholds and the joint rule were chosen on the same images. "
                      "The leaderboard score of this notebook's submission is the honest figure.")
    estimate = artifacts.read_metrics(run_dir, "evaluate").get("estimate")
    if estimate is not None:
        low, high = artifacts.read_metrics(run_dir, "evaluate")["interval"]
        blocks.append(f"What to expect off validation, estimated without the images' own truth (the joint rule chosen on "
                      f"half of the validation images, flags fitted without the images scored): {estimate:.4f}, "
                      f"interval [{low:.4f}, {high:.4f}] by bootstrap over images.")
    attack = Path(run_dir) / "attack" / "attack.csv"
    if attack.is_file():
        rows = artifacts.read_attack_rows(run_dir)
        clean = {(row["model"], row["defence"]): row["clean_score"] for row in rows}
        costs = [f"{model} {clean[(model, 'none')]:.3f} -> {score:.3f}" for (model, defence), score in clean.items()
                 if defence != "none"]
        blocks.append(f"The defence's cost on clean validation images: {'; '.join(costs)}.")
    return blocks


def final_models_text(final_models: dict) -> str:
    """Which models made the test predictions (stage refit's final_models.json), in a sentence per head."""
    lines = []
    for head in ("classifier", "segmenter"):
        entry = final_models[head]
        epochs = ", ".join(f"{name} {count}" for name, count in entry.get("epochs", {}).items())
        refit = f" (refit after tune, epochs {epochs}: the validation figures above are the first model's)" if entry["refit"] else ""
        if entry.get("self_trained"):
            refit = " (self-trained after tune: the validation figures above are the first model's)"
        lines.append(f"- {head}: {', '.join(f'`{name}`' for name in entry['models'])}, trained on {entry['trained_on']} "
                     f"({entry['images']} images){refit}.")
    return "The test predictions were made by:\n\n" + "\n".join(lines)


TRAINING_FIGURES = ((artifacts.CLASSIFIER_CURVES, "Classifier learning curves"),
                    (artifacts.SEGMENTER_CURVES, "Segmenter learning curves"),
                    (artifacts.refit_curves("classifier"), "Classifier refit on every labelled image"),
                    (artifacts.refit_curves("segmenter"), "Segmenter refit on every labelled image"))
# Where a run's files went, not what it did.
LOCATION_KEYS = ("run_name", "runs_dir", "data.root", "submit.output_dir")


def training_part(run_dir: Path) -> list[Block]:
    """For a notebook predicting from a run trained before it: which run, its configuration's differences from the
    defaults, where, when and on what each of its stages ran (as it recorded them), the models that predict, and the
    learning curves of its trainings."""
    from voc_pipeline.comparison import differences, duration
    from voc_pipeline.config import Config, config_to_dict
    from voc_pipeline.graph import TRAINED_STAGES, flatten
    from voc_pipeline.run_folder import read_run_info

    run_dir = Path(run_dir)
    configured = {key: value for key, value in flatten(artifacts.read_config(run_dir)).items() if key not in LOCATION_KEYS}
    changed = differences(configured, {key: value for key, value in flatten(config_to_dict(Config())).items()
                                       if key not in LOCATION_KEYS})
    records = read_run_info(run_dir)["stages"]
    rows = [(stage, record.get("finished", "-"), duration(float(record.get("seconds", 0))), record.get("host", "-"),
             record.get("device", "-"), record.get("tensorflow") or "-", record.get("keras") or "-",
             f"voc-pipeline {record.get('version', '?')}") for stage in TRAINED_STAGES if (record := records.get(stage))]
    training_seconds = sum(float(records[stage].get("seconds", 0)) for stage in TRAINED_STAGES if stage in records)
    intro = (f"This notebook predicts with the models of run `{run_dir.name}`, trained before it: "
             f"{duration(training_seconds)} of stages from the data check to the refit. Its configuration differs from "
             f"the package's defaults in: " + ("; ".join(f"`{line}`" for line in changed) or "nothing") + ".")
    table = markdown.table(("stage", "finished (UTC)", "took", "host", "device", "TensorFlow", "Keras", "package"), rows)
    return [intro, "Where and when each stage ran, as the run recorded it:", table,
            final_models_text(artifacts.read_json(artifacts.FINAL_MODELS, run_dir)), *figures(run_dir, TRAINING_FIGURES)]


def experiments_part(folder: Path) -> list[Block]:
    """The runs made before this notebook (bundled with `kernel build --experiments`): the comparison."""
    folder = Path(folder)
    manifest = json.loads((folder / "experiments.json").read_text())
    comparison = "\n".join(line for line in (folder / "comparison.md").read_text().splitlines() if not line.startswith("# "))
    return [f"{len(manifest['runs'])} runs made offline with this package, bundled with the notebook's dataset "
            f"({manifest['files']} files, {byte_size(manifest['bytes'])}: configuration, metrics, reports and figures; "
            f"no models or data): {', '.join(f'`{name}`' for name in manifest['runs'])}.", comparison.strip(),
            Figure(folder / "comparison.png", "Validation score of each offline run")]


def submission_part(run_dir: Path, working: Path) -> list[Block]:
    """The submission the run wrote, and the files left in Kaggle's working folder.

    Raises:
        OutputFolderError: no submission.csv in `working`, or so many files there that Kaggle would not find it.
    """
    from voc_pipeline.data.output_folder import KAGGLE_FILE_LIMIT, count_files

    submit = artifacts.read_metrics(run_dir, "submit")
    submission, files = Path(working) / "submission.csv", count_files(Path(working))
    if not submission.is_file() or files >= KAGGLE_FILE_LIMIT:
        raise OutputFolderError(f"{working}: {'no submission.csv' if not submission.is_file() else 'submission.csv'} and "
                                f"{files} files; Kaggle finds the submission only with fewer than {KAGGLE_FILE_LIMIT}")
    return [f"`{submission}`: {submit['rows']} rows, a classification row and a segmentation row for each of "
            f"{submit['rows'] // 2} test images, checked row by row against the test arrays before it was written. "
            f"{files} files remain in `{working}` (Kaggle finds no submission at {KAGGLE_FILE_LIMIT} or more)."]
