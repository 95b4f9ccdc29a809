"""Out-of-distribution scores: fitting the feature_distance rule, choosing a threshold, and how
well a score tells labelled images from images that are none of the classes (AUROC, the share
kept at a coverage; `ood_report`, evaluate.py --ood). `energy` (Liu et al. 2020),
T * logsumexp(logits / T), needs the logits, so only a Keras model can give it; evaluate.py --ood
measures it for comparison.
"""

from pathlib import Path

import numpy as np
from sklearn import covariance
from sklearn import metrics as sk_metrics

from skin_keras.core.errors import UserError
from skin_keras.infer import files
from skin_keras.infer.runner import KerasRunner, Runner
from skin_keras.model import io, parts
from skin_keras.model.spec import check_coverage


def fit_feature_distance(features: np.ndarray, labels: np.ndarray, num_classes: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(projection P, centres) of `UnknownScore` from training features: class means and
    one shared covariance of the class-centred features (Ledoit-Wolf shrinkage: a stable
    inverse with fewer images than feature dimensions)."""
    features = np.asarray(features, np.float64)
    present = np.unique(labels)
    means = np.zeros((num_classes, features.shape[1]))
    for index in present:
        means[index] = features[labels == index].mean(axis=0)
    precision = covariance.LedoitWolf().fit(features - means[labels]).precision_
    projection = np.linalg.cholesky((precision + precision.T) / 2)
    centres = means @ projection
    # A class without training images can never be the nearest.
    centres[np.setdiff1d(np.arange(num_classes), present)] = 1e6
    return projection.astype(np.float32), centres.astype(np.float32)


def feature_distance(features: np.ndarray, projection: np.ndarray, centres: np.ndarray
                     ) -> np.ndarray:
    """What `UnknownScore` gives for feature_distance, in NumPy."""
    projected = np.asarray(features, np.float64) @ projection
    distances = ((projected[:, None, :] - np.asarray(centres, np.float64)[None]) ** 2).sum(-1)
    return -distances.min(axis=1)


def max_probability(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities, np.float64).max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """T * logsumexp(logits / T) per row (the negative energy: higher = more familiar)."""
    scaled = np.asarray(logits, np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    return temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


def threshold_for_coverage(scores: np.ndarray, coverage: float) -> float:
    """A threshold that keeps (score >= threshold) the top ceil(coverage * n) of `scores` and
    flags the rest: half-way between the lowest kept and the highest flagged score, so that
    the same images computed in another precision (a TFLite file, a batch of another size) fall
    on the same side."""
    check_coverage(coverage)
    scores = np.sort(np.asarray(scores, np.float64))
    if not len(scores):
        raise UserError("no validation scores to choose the unknown threshold on")
    keep = max(int(np.ceil(coverage * len(scores) - 1e-9)), 1)
    lowest_kept = scores[len(scores) - keep]
    if keep == len(scores):  # Everything kept: just below the lowest score.
        return float(lowest_kept - 1e-3 * max(scores[-1] - scores[0], abs(lowest_kept), 1e-6))
    return float((lowest_kept + scores[len(scores) - keep - 1]) / 2)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """How well the score ranks in-distribution images above the others (0.5 = chance)."""
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(sk_metrics.roc_auc_score(labels, np.r_[in_scores, out_scores]))


def fpr_at_coverage(in_scores: np.ndarray, out_scores: np.ndarray, coverage: float) -> float:
    """The share of out-of-distribution images kept (not flagged) at the threshold that keeps
    `coverage` of the in-distribution ones (FPR at 95% TPR for coverage 0.95)."""
    threshold = threshold_for_coverage(in_scores, coverage)
    return float(np.mean(np.asarray(out_scores) >= threshold))


def ood_files(ood: str) -> list:
    """The files of the --ood folder; UserError when it has none that look like images (said
    before the labelled evaluation, not after)."""
    listed = files.list_sources([ood])
    if not listed:
        raise UserError(f"--ood={ood}: no files found")
    if all(error is not None for error in files.file_errors(listed)):
        raise UserError(f"--ood={ood}: none of the {len(listed)} files could be read")
    return listed


def ood_report(runner: Runner, ood: str, in_paths: list, in_results: dict, batch_size: int,
               tta: int, in_inputs: dict) -> dict:
    """How well each out-of-distribution score tells the labelled images (in_*: their paths,
    the runner's answers and other inputs) from the images in `ood`: AUROC overall and per
    sub-folder (kind), the share of `ood` images kept at the threshold that keeps 95% of the
    labelled ones, and what the model's own unknown rule keeps of both. Scores: max_probability
    always, the model's rule score, and, for a Keras model, energy (from the logits)."""
    listed = ood_files(ood)
    results, errors = files.predict_files(runner, listed, batch_size, tta)
    ok = np.array([error is None for error in errors])
    if not ok.any():
        raise UserError(f"--ood={ood}: none of the {len(listed)} files could be read")
    ood_paths = [p for p, good in zip(listed, ok) if good]
    inside = {"max_probability": max_probability(in_results[io.PROBABILITIES])}
    outside = {"max_probability": max_probability(results[io.PROBABILITIES][ok])}
    rule = runner.unknown
    if rule is not None and rule.score != "max_probability":
        inside[rule.score] = in_results[io.UNKNOWN_SCORE]
        outside[rule.score] = results[io.UNKNOWN_SCORE][ok]
    logits = parts.logits_model(runner.model) if isinstance(runner, KerasRunner) else None
    if logits is not None:  # The same images again, for their logits.
        logit_runner = runner.derived(logits)
        inside["energy"] = energy(files.predict_files(logit_runner, in_paths, batch_size, tta,
                                                      in_inputs, False)[0]["logits"])
        outside["energy"] = energy(files.predict_files(logit_runner, ood_paths, batch_size, tta,
                                                       show_progress=False)[0]["logits"])
    kinds = sorted({Path(p).relative_to(ood).parts[0] for p in ood_paths
                    if len(Path(p).relative_to(ood).parts) > 1})
    report = {"folder": str(ood), "images": len(ood_paths), "labelled images": len(in_paths),
              "bad files": [f"{p}: {e}" for p, e in zip(listed, errors) if e], "scores": {}}
    for name in inside:
        entry = {"auroc": auroc(inside[name], outside[name]),
                 "ood kept at 95% coverage": fpr_at_coverage(inside[name], outside[name], 0.95)}
        for kind in kinds:
            chosen = np.array([Path(p).relative_to(ood).parts[0] == kind for p in ood_paths])
            entry[f"auroc {kind}"] = auroc(inside[name], outside[name][chosen])
        report["scores"][name] = entry
    if rule is not None:
        report["unknown rule"] = {
            **rule.to_dict(),
            "labelled images kept": float(np.mean(~rule.flags(in_results[io.UNKNOWN_SCORE]))),
            "ood images flagged": float(np.mean(rule.flags(results[io.UNKNOWN_SCORE][ok])))}
    return report


def describe_ood(report: dict) -> str:
    lines = [f"out-of-distribution: {report['images']} images of {report['folder']} against "
             f"{report['labelled images']} labelled images"]
    for name, entry in report["scores"].items():
        kinds = ", ".join(f"{key.removeprefix('auroc ')} {value:.3f}"
                          for key, value in entry.items() if key.startswith("auroc "))
        lines.append(f"  {name:<16} AUROC {entry['auroc']:.3f} ({kinds or 'one kind'}); "
                     f"{entry['ood kept at 95% coverage']:.1%} of them kept at 95% coverage")
    if "unknown rule" in report:
        rule = report["unknown rule"]
        lines.append(f"  the model's rule ({rule['unknown when']}): keeps "
                     f"{rule['labelled images kept']:.1%} of the labelled images, flags "
                     f"{rule['ood images flagged']:.1%} of the others")
    return "\n".join(lines)
