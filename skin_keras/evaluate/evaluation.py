"""evaluate.py's job: score a model on a labelled class-folder set and write the report
(report.py: metrics.json's figures, plots, mistakes); with --shifts under simulated shifts
(robustness.py), with --ood against images that are none of the classes (ood.py), with
--metadata_ablation once more with the patient metadata blanked."""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from skin_keras.core import atomic, plots
from skin_keras.core.errors import UserError
from skin_keras.core.options import option
from skin_keras.core.layout import RunFolder
from skin_keras.data import decode_check, folders, patient_metadata
from skin_keras.evaluate import (
    bootstrap,
    calibration,
    model_card,
    ood,
    output_folder,
    robustness,
    shifts,
    subgroups,
)
from skin_keras.evaluate import report as reports
from skin_keras.infer import backend as backends
from skin_keras.infer import files, load, outputs
from skin_keras.infer.predict import ModelRunConfig, prediction_rows
from skin_keras.infer.runner import Runner, explainable, keras_model
from skin_keras.model import adapt_bn, io
from skin_keras.model.metrics import matrix_title

_log = logging.getLogger(__name__)


# A 95% percentile interval cuts 2.5% off each tail: fewer than 40 resamples have no tail.
MIN_RESAMPLES = 40


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(ModelRunConfig):
    """evaluate.py's flags."""

    data: str = option(None, "Labelled images: one sub-folder per class, named as the model's "
                       "classes (a class may be absent or empty).", required=True)
    output: str = option(None, "Folder for the report (default: <model run folder>/eval_<data "
                         "folder>, or eval_<data folder>_2, ... for another folder of that "
                         "name); an earlier evaluation of the same model and data there is "
                         "replaced, one of another is refused.")
    shifts: tuple[str, ...] = option(
        (), "Robustness report: also score the images under these shifts (comma-separated, or "
        f"all): {', '.join(shifts.NAMES)}. Writes robustness.json and robustness.png.",
        choices=("all",) + shifts.NAMES)
    metadata_ablation: bool = option(False, "For a metadata model: also score it with every "
                                     "image's metadata blanked to missing (in "
                                     "<output>/metadata_blanked; both in metrics.json).")
    group_by: tuple[str, ...] = option(
        (), "Also report per subgroup (comma-separated): age (in bands), sex, site (from the "
        "metadata CSV) or a column of split.csv beside the data folder (e.g. center, from "
        "prepare_isic --groups). In metrics.json, the console and subgroups.png.")
    bootstrap: int = option(1000, "Resamples (by lesion, from split.csv's lesion_id) for the 95% "
                            "confidence intervals of every headline figure; 0 = none, else at "
                            f"least {MIN_RESAMPLES}.", low=0, high=100000)
    bootstrap_seed: int = option(0, "Seed of the bootstrap draws.", low=0, high=2**32 - 1)
    adapt_bn: bool = option(False, "Test-time adaptation to another clinic: re-estimate the "
                            "BatchNorm statistics of a Keras model on --data's images (up to 512,"
                            " labels unused) before scoring them (AdaBN); runs on Keras.")
    ood: str = option("", "A folder of images that are none of the classes (searched "
                      "recursively; python -m skin_keras.ood_images makes one): report how well "
                      "the out-of-distribution scores tell --data from it (AUROC, overall and "
                      "per sub-folder) and what the model's unknown rule keeps ('ood' in "
                      "metrics.json).", path=True)

    def __post_init__(self):
        super().__post_init__()
        if 0 < self.bootstrap < MIN_RESAMPLES:
            raise UserError(f"--bootstrap={self.bootstrap}: a 95% interval needs at least "
                            f"{MIN_RESAMPLES} resamples (its 2.5th and 97.5th percentiles; "
                            "1,000 is usual), or 0 for none")


def labelled_folder(runner: Runner, data: str | Path) -> folders.ImageFolder:
    """The labelled set in `data`, in the model's class order, every file fully decoded once."""
    folder = folders.scan_image_folder(data, class_names=runner.class_names,
                                       allow_missing_classes=True)
    return decode_check.set_aside_undecodable(folder, "evaluating")


def evaluate(loaded: Runner, folder: folders.ImageFolder, output: Path, config: EvaluateConfig,
             inputs: dict, quiet: bool = False, explain: bool = False,
             facts: tuple | None = None) -> dict:
    """Scores `loaded` on the scanned labelled `folder` (`inputs`: the model's other named
    inputs per image, files.other_inputs; {} runs a metadata model with every row missing);
    writes the report files to `output` and returns metrics.json's content."""
    if not quiet:
        _log.info(folders.describe(folder, "evaluating"))
    paths = [Path(p) for p in folder.paths]
    runner = backends.select(loaded, config.backend, len(paths) * config.tta)
    results, errors = files.predict_files(runner, paths, config.batch_size, config.tta, inputs,
                                          show_progress=not quiet)
    broken = sum(error == files.MODEL_NAN for error in errors)
    if broken:
        raise UserError(f"{runner.source} produced NaN for {broken} of the images in "
                        f"{config.data}: the model is broken (e.g. from a diverged training run)")
    ok = np.array([error is None for error in errors], dtype=bool)
    if not ok.any():
        raise UserError(f"no image in {config.data} could be read")
    rows = prediction_rows(paths, results, errors, runner, inputs=inputs)
    output.mkdir(parents=True, exist_ok=True)
    outputs.write_predictions(rows, runner.class_names, output)

    labels, probabilities = folder.labels[ok], results[io.PROBABILITIES][ok]
    kept = [str(p) for p, good in zip(paths, ok) if good]
    report = reports.metrics_report(labels, probabilities, runner.class_names, config.tta)
    report.update(model=str(runner.source), data=str(config.data),
                  temperature=loaded.temperature, batch_norm_adapted=config.adapt_bn)
    if io.UNKNOWN_SCORE in results:
        report["unknown"] = {**runner.unknown.to_dict(), "images flagged": int(
            runner.unknown.flags(results[io.UNKNOWN_SCORE][ok]).sum())}
    if config.ood and not quiet:
        report["ood"] = ood.ood_report(
            runner, config.ood, kept, {name: values[ok] for name, values in results.items()},
            config.batch_size, config.tta,
            {name: [v for v, good in zip(values, ok) if good] for name, values in inputs.items()})
    if io.RECORDS in inputs:
        report["metadata"] = _metadata_summary(config.metadata, paths, inputs[io.RECORDS])
    report["decode warnings"] = [f"{p}: {w}" for p, w in folder.decode_warnings]
    report["bad files"] = [f"{p}: {r}" for p, r in folder.bad_files] + [
        f"{p}: {e}" for p, e in zip(paths, errors) if e]
    if facts is not None:  # (subgroups.image_facts: values and lesions of every image)
        _add_intervals(report, facts, ok, labels, probabilities, runner.class_names, config,
                       output)
    report["misclassified"] = reports.write_misclassified(
        kept, labels, probabilities, runner.class_names, output / "misclassified.csv")
    atomic.write_json_atomic(output / "metrics.json", report)
    tta = config.tta
    plots.confusion_matrix(np.array(report["confusion matrix"]), runner.class_names,
                           output / "confusion_matrix.png", title=matrix_title(
                               f"{config.data} ({tta} TTA view{'s' if tta > 1 else ''})",
                               np.array(report["confusion matrix"])))
    reports.plot_roc_curves(labels, probabilities, runner.class_names, output / "roc_curves.png")
    calibration.plot_reliability(probabilities, labels, output / "reliability.png",
                                 title=Path(config.data).name)
    if explain:
        outputs.explain_files(loaded, rows, output / "explain", config.batch_size)
    return report


def _metadata_summary(csv_path: str, paths: list[Path], records: list) -> dict:
    _, found = patient_metadata.read_table(csv_path).lookup(paths) if (
        csv_path.lower() != "none") else (None, np.zeros(len(paths), bool))
    return {"csv": csv_path, "images with a row": int(found.sum()),
            "images with any value": sum(not r.is_missing for r in records)}


def _add_intervals(report, facts, ok, labels, probabilities, class_names, config, output):
    """The bootstrap intervals of the headline figures and the subgroup rows, into `report`
    (and subgroups.png)."""
    values, lesions, how = facts
    lesions = lesions[ok]
    if config.bootstrap:
        report["intervals"] = {
            "level": f"{bootstrap.LEVEL}%", "resamples": config.bootstrap,
            "seed": config.bootstrap_seed, "resampled": how,
            "lesions": int(len(set(lesions))),
            **bootstrap.intervals(labels, probabilities, lesions, class_names, config.bootstrap,
                                  config.bootstrap_seed)}
    if config.group_by:
        kept = {name: [v for v, good in zip(values[name], ok) if good] for name in values}
        report["subgroups"] = subgroups.subgroup_report(
            labels, probabilities, kept, config.group_by, lesions, class_names,
            config.bootstrap, config.bootstrap_seed)
        subgroups.plot(report["subgroups"], output / "subgroups.png")


def _load_checked(config: EvaluateConfig) -> Runner:
    """The model, once every option that cannot work with it or with each other is refused:
    before any prediction."""
    if config.shifts and (config.ood or config.metadata_ablation):
        raise UserError(f"--{'ood' if config.ood else 'metadata_ablation'} and --shifts: run "
                        "them one at a time")
    loaded = load.load(config.model_path)
    if config.metadata_ablation and io.METADATA not in loaded.inputs:
        raise UserError(f"--metadata_ablation: {loaded.source} has no metadata input (it was "
                        "trained without --metadata)")
    if config.output is not None and Path(config.output).is_file():
        raise UserError(f"--output={config.output} is a file, not a folder")
    if config.ood and not Path(config.ood).is_dir():
        raise UserError(f"--ood={config.ood} is not a folder (python -m skin_keras.ood_images "
                        "makes one)")
    if config.ood:
        ood.ood_files(config.ood)  # Said before the labelled evaluation, not after it.
    if config.explain:
        explainable(loaded)  # Say so before predicting, not after.
    if config.adapt_bn:
        keras_model(loaded, "--adapt_bn")
    return loaded


def evaluate_model_path(config: EvaluateConfig) -> dict:
    """evaluate.py's job: loads the model, scores it on config.data, logs and writes the
    report; with --shifts, also under those shifts (the robustness report, returned instead);
    --metadata_ablation scores a metadata model a second time with the metadata blanked."""
    loaded = _load_checked(config)
    folder = labelled_folder(loaded, config.data)
    if config.adapt_bn:
        adapted = adapt_bn.adapt_batch_norm(keras_model(loaded, "--adapt_bn"), folder.paths,
                                            config.bootstrap_seed)
        _log.info(f"BatchNorm statistics re-estimated on {adapted} images of {config.data}")
        config = dataclasses.replace(config, backend="keras")  # Not a copy of the file.
    facts = subgroups.image_facts(folder.paths, config.data, config.metadata, config.group_by)
    subgroups.check_names(config.group_by, facts[0], config.data)
    inputs = files.other_inputs(loaded, config.metadata, folder.paths)
    source = loaded.source
    run_dir = RunFolder.of_model(source).path
    output = output_folder.claim(config.output, run_dir, str(source), config.data)
    if config.shifts:
        def score(scored, into, quiet):  # Shifted folders keep the files' order: same inputs.
            return evaluate(loaded, scored, into, config, inputs, quiet,
                            config.explain and not quiet, facts=None if quiet else facts)

        result = robustness.robustness_report(
            score, folder, config.shifts, output,
            {"model": str(loaded.source), "data": str(config.data)})
        _log.info(robustness.describe(result))
        _write_card(output, loaded, run_dir)
        _log.info(f"report written to {output}")
        return result
    report = evaluate(loaded, folder, output, config, inputs, explain=config.explain,
                      facts=facts)
    _log.info(reports.describe(report, loaded.class_names))
    if report.get("subgroups"):
        _log.info(subgroups.describe(report["subgroups"]))
    if config.ood:
        _log.info(ood.describe_ood(report["ood"]))
    if config.metadata_ablation:
        blanked = evaluate(loaded, folder, output / "metadata_blanked", config, {}, quiet=True)
        report["metadata ablation"] = {
            "with metadata": reports.summary(report, loaded.class_names),
            "metadata blanked": reports.summary(blanked, loaded.class_names)}
        atomic.write_json_atomic(output / "metrics.json", report)
        _log.info(f"metadata blanked: accuracy {blanked['accuracy']:.4f}, balanced accuracy "
                  f"{blanked['balanced accuracy']:.4f} (with metadata "
                  f"{report['balanced accuracy']:.4f}); report in {output / 'metadata_blanked'}")
    _write_card(output, loaded, run_dir)
    _log.info(f"report written to {output}")
    return report


def _write_card(output: Path, loaded: Runner, run_dir: Path) -> None:
    params = RunFolder(run_dir).params
    metrics = json.loads((output / "metrics.json").read_text())
    model_card.write(output, metrics, loaded.class_names, params if params.is_file() else None)
