"""K-fold cross-validation and the ensemble of its members (`train.py --folds=K`).

The training images (--data_train) are split into K lesion-grouped, class-stratified folds
(data/folds.py); member i trains on the other folds and chooses its best epoch on fold i. The held-out
--data_val is seen by no member: it scores the ensemble.

    <save_ret>/expN/
      flags.cfg, train_params.json, class_indices.json   as any run ("cross-validation" entry)
      folds.csv                  image, class, group, fold: which fold validates each image
      folds/fold_i/{train,val}/  links to the images of member i (its --data_train/--data_val)
      fold_1/ ... fold_K/        complete run folders, one per member
      oof_predictions.csv        every training image predicted by the member that did not
                                 train on it (out of fold)
      cv_metrics.json            out-of-fold balanced accuracy (what papers report), each
                                 member's figures on its fold and on --data_val, the ensemble's
      weights/best.keras         the ensemble: one graph that averages the members'
                                 probabilities; predict.py, evaluate.py and export.py take the
                                 run folder as they take any run

Resuming (`--resume=<save_ret>/expN`) skips finished members, resumes the one that was
interrupted at its last completed epoch, and rebuilds the ensemble.
"""

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np

from skin_keras.core import atomic, plots
from skin_keras.core.errors import UserError
from skin_keras.core.layout import RunFolder
from skin_keras.data import decode_check, folders, folds, patient_metadata
from skin_keras.evaluate.report import metrics_report
from skin_keras.infer import files, load
from skin_keras.infer.runner import keras_model
from skin_keras.model import io, record
from skin_keras.model.ensemble import ensemble_model
from skin_keras.model.metrics import matrix_title
from skin_keras.train import loop, run_folder
from skin_keras.train import resume as resumes
from skin_keras.train.config import TrainConfig

_log = logging.getLogger(__name__)

OOF_FILE = "oof_predictions.csv"
METRICS_FILE = "cv_metrics.json"


def _member_config(config: TrainConfig, run_dir: Path, fold: int, metadata: str
                   ) -> TrainConfig:
    data = run_dir / "folds" / f"fold_{fold}"
    member_dir = run_dir / f"fold_{fold}"
    resume = str(member_dir) if RunFolder(member_dir).params.is_file() else ""
    return dataclasses.replace(config, folds=0, data_train=str(data / "train"),
                               data_val=str(data / "val"), metadata=metadata, calibrate=False,
                               save_ret=str(run_dir), resume=resume)


def train_folds(config: TrainConfig, verbose) -> Path:
    """Trains the K members (each a complete run folder), then writes the out-of-fold
    predictions, the ensemble and cv_metrics.json; returns the run folder."""
    resume = resumes.check_resumable(config) if config.resume else None
    train = folders.scan_image_folder(config.data_train,
                                      class_names=resume and resume.class_names)
    val = folders.scan_image_folder(config.data_val, class_names=train.class_names)
    folders.refuse_overlap(train, val)
    train = decode_check.set_aside_undecodable(train, "train")
    val = decode_check.set_aside_undecodable(val, "val")
    _log.info(folders.describe(train, "train (split into folds)"))
    _log.info(folders.describe(val, "val (held out: scores the ensemble)"))
    groups, grouping = folds.lesion_groups(train)
    if config.fold_by:
        fold_of, grouping = folds.group_folds(train, groups, config.fold_by, config.folds)
    else:
        fold_of = folds.assign_folds(train, groups, config.folds, config.seed)
    metadata = patient_metadata.resolve(config.metadata, config.data_train)

    run_dir = resume.run_dir if resume else run_folder.new_run_dir(config.save_ret)
    params_path = RunFolder(run_dir).params
    if resume:
        params = RunFolder(run_dir).read_params()
        if params.get("cross-validation", {}).get("folds") != config.folds:
            raise UserError(f"--resume={run_dir} is not a {config.folds}-fold run")
        recorded = folds.read_folds(run_dir / folds.FOLDS_FILE)
        if recorded != {str(p): int(f) for p, f in zip(train.paths, fold_of)}:
            raise UserError(f"--resume={run_dir}: the training images or their folds are not "
                            f"the ones in its {folds.FOLDS_FILE}; resume with the run's own data")
    else:
        params = _start(run_dir, config, train, val, fold_of, groups, grouping)
    finished = params["cross-validation"]["finished folds"]
    _log.info(f"cross-validation: {config.folds} folds ({grouping}); run folder {run_dir}")

    for fold in range(1, config.folds + 1):
        if fold in finished:
            _log.info(f"fold {fold}/{config.folds}: finished earlier "
                      f"({run_dir / f'fold_{fold}'})")
            continue
        folds.link_tree(run_dir / "folds" / f"fold_{fold}" / "train", train, fold_of != fold - 1)
        folds.link_tree(run_dir / "folds" / f"fold_{fold}" / "val", train, fold_of == fold - 1)
        member = _member_config(config, run_dir, fold, str(metadata) if metadata else "none")
        _log.info(f"\n=== fold {fold}/{config.folds}: {np.sum(fold_of != fold - 1)} training "
                  f"images, {np.sum(fold_of == fold - 1)} validating ===")
        loop.train_and_evaluate(member, verbose, run_dir / f"fold_{fold}")
        finished.append(fold)
        atomic.write_json_atomic(params_path, params)  # A killed run skips this fold.

    metrics = _finish(run_dir, config, train, val, fold_of, metadata)
    _log.info(describe(metrics))
    _log.info(f"run folder: {run_dir}")
    return run_dir


def _start(run_dir, config, train, val, fold_of, groups, grouping) -> dict:
    run_folder.write_class_indices(run_dir, train.class_names)
    atomic.write_text_atomic(RunFolder(run_dir).flags, config.to_flagfile())
    folds.write_folds(run_dir / folds.FOLDS_FILE, train, groups, fold_of)
    params = {"train parameters": config.to_dict(),
              "cross-validation": {
                  "folds": config.folds, "grouping": grouping, "finished folds": [],
                  "images per fold": [int(np.sum(fold_of == f)) for f in range(config.folds)],
                  "held-out validation images": len(val.paths)}}
    atomic.write_json_atomic(RunFolder(run_dir).params, params)
    return params


def _finish(run_dir, config, train, val, fold_of, metadata) -> dict:
    """Out-of-fold predictions, each member on the held-out val, the ensemble model and its
    figures; writes oof_predictions.csv, weights/best.keras and cv_metrics.json."""
    members = [load.load(run_dir / f"fold_{fold}") for fold in range(1, config.folds + 1)]
    names = list(train.class_names)
    csv_path = str(metadata) if metadata else "none"
    oof = np.full((len(train.paths), len(names)), np.nan, np.float32)
    metrics = {"folds": config.folds, "members": []}
    val_paths = [Path(p) for p in val.paths]
    val_inputs = files.other_inputs(members[0], csv_path, val_paths)
    val_probabilities = []
    for fold, member in enumerate(members, start=1):
        _log.info(f"fold {fold}: predicting its validation fold and the held-out val")
        chosen = np.flatnonzero(fold_of == fold - 1)
        paths = [Path(train.paths[i]) for i in chosen]
        results, _ = files.predict_files(member, paths, config.batch_size,
                                         inputs=files.other_inputs(member, csv_path, paths))
        oof[chosen] = results[io.PROBABILITIES]
        held_out = files.predict_files(member, val_paths, config.batch_size,
                                       inputs=val_inputs)[0][io.PROBABILITIES]
        val_probabilities.append(held_out)
        metrics["members"].append({
            "fold": fold, "run": str(run_dir / f"fold_{fold}"),
            "on its fold": _figures(train.labels[chosen], oof[chosen], names),
            "on the held-out val": _figures(val.labels, held_out, names)})
    answered = np.isfinite(oof).all(axis=1)
    metrics["out of fold"] = {**_figures(train.labels[answered], oof[answered], names),
                              "images": int(answered.sum())}
    ensemble = np.mean(val_probabilities, axis=0)
    metrics["ensemble on the held-out val"] = _figures(val.labels, ensemble, names)
    _write_oof(run_dir / OOF_FILE, train, fold_of, oof, names)

    model = ensemble_model([keras_model(member, "The ensemble") for member in members])
    RunFolder(run_dir).weights.mkdir(exist_ok=True)
    run_folder.uncalibrate(run_dir)  # Built again: any earlier calibration is stale.
    atomic.write_atomic(RunFolder(run_dir).best, lambda tmp: record.save_model(
        model, tmp, record.ModelInfo.of(model, names)), suffix=".keras")
    atomic.write_json_atomic(run_dir / METRICS_FILE, metrics)
    matrix = np.array(metrics["out of fold"]["confusion matrix"])
    plots.confusion_matrix(matrix, names, run_dir / "confusion_matrix_oof.png",
                           title=matrix_title(f"out of fold, {config.folds} folds", matrix))
    return metrics


def _figures(labels: np.ndarray, probabilities: np.ndarray, names: list[str]) -> dict:
    report = metrics_report(labels, probabilities, names, tta=1)
    return {key: report[key] for key in ("accuracy", "balanced accuracy", "mean roc auc",
                                         "confusion matrix")}


def _write_oof(path: Path, train, fold_of, oof, names) -> None:
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "class", "fold", "label", *names])
            for i, probabilities in enumerate(oof):
                answered = np.isfinite(probabilities).all()
                writer.writerow([train.paths[i], names[train.labels[i]], fold_of[i] + 1,
                                 names[int(np.argmax(probabilities))] if answered else "",
                                 *(f"{p:.6f}" if answered else "" for p in probabilities)])

    atomic.write_atomic(path, write)


def describe(metrics: dict) -> str:
    lines = [f"{'':<28} {'balanced acc.':>13} {'accuracy':>9}"]
    for member in metrics["members"]:
        for where in ("on its fold", "on the held-out val"):
            figures = member[where]
            lines.append(f"{'fold ' + str(member['fold']) + ' ' + where:<28} "
                         f"{figures['balanced accuracy']:>13.4f} {figures['accuracy']:>9.4f}")
    for name, key in (("out of fold (CV)", "out of fold"),
                      ("ensemble, held-out val", "ensemble on the held-out val")):
        figures = metrics[key]
        lines.append(f"{name:<28} {figures['balanced accuracy']:>13.4f} "
                     f"{figures['accuracy']:>9.4f}")
    return "\n".join(lines)
