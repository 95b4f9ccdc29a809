"""How an exported artifact is checked against the Keras model it came from: the images and
patient records it is checked on, the timing of a runner, and the agreement figures
(report.json's rows, the printed table)."""

import time

import numpy as np

from skin_keras.data import patient_metadata
from skin_keras.infer.runner import Runner
from skin_keras.model import io

def parity_records(runner: Runner, paths: list, metadata: str) -> dict:
    """The other named inputs of the parity images: for a metadata model, patient records from
    the CSV when given (rows it lacks run as missing), else varied so that every age band, every
    vocabulary value and "missing" of each input occur; {} for an image-only model."""
    if io.METADATA not in runner.inputs:
        return {}
    if metadata.lower() != "none":
        records, _, _ = patient_metadata.for_prediction(metadata, paths)
        return {io.RECORDS: records}
    return {io.RECORDS: runner.about.encoding.varied_records(len(paths))}


def timed(run, count: int) -> tuple[object, float]:
    """(run(0), mean seconds per image over `count` images), after warm-up calls run(1) and
    run(2) (on one and two images: tracing a graph for any batch size, the delegate's set-up),
    so the time is that of inference alone."""
    run(1)
    run(2)
    start = time.perf_counter()
    answer = run(0)
    return answer, (time.perf_counter() - start) / count


def timed_runner(runner: Runner, batch: dict) -> tuple[dict, float]:
    """The runner's answers to `batch` and its mean seconds per image."""
    return timed(lambda images: runner({name: value[:images] if images else value
                                        for name, value in batch.items()}),
                 len(batch[io.IMAGE]))


def agreement(reference: dict, answer: dict, labels: np.ndarray, rule=None) -> dict:
    """How an artifact's answers agree with the Keras model's (`reference`); for a model with
    an unknown `rule`, also how often both call the same images unknown."""
    ours, theirs = reference[io.PROBABILITIES], answer[io.PROBABILITIES]
    entry = {"top1 agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
             "max abs probability difference": float(np.max(np.abs(ours - theirs))),
             "accuracy": float(np.mean(theirs.argmax(1) == labels))}
    if rule is not None:
        ours, theirs = reference[io.UNKNOWN_SCORE], answer[io.UNKNOWN_SCORE]
        entry["unknown agreement"] = float(np.mean(rule.flags(ours) == rule.flags(theirs)))
        entry["max abs score difference"] = float(np.max(np.abs(ours - theirs)))
    return entry


def describe(report: dict) -> str:
    lines = [f"parity on {report['parity images']} images of {report['data']} "
             f"(Keras .keras model: accuracy {report['keras']['accuracy']:.4f}, "
             f"{report['keras']['mean latency ms']:.2f} ms/image in batches of 32)",
             f"{'artifact':<16} {'top-1 agree':>11} {'max |dp|':>9} {'accuracy':>8} "
             f"{'size MB':>8} {'ms/image':>8}"]
    for fmt, entry in report["artifacts"].items():
        lines.append(f"{fmt:<16} {100 * entry['top1 agreement']:>10.1f}% "
                     f"{entry['max abs probability difference']:>9.2e} "
                     f"{entry['accuracy']:>8.4f} {entry['file size bytes'] / 1e6:>8.2f} "
                     f"{entry['mean latency ms']:>8.2f}")
    return "\n".join(lines)
