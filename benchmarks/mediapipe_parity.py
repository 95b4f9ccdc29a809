"""How far MediaPipe Tasks' ImageClassifier is from predict.py on the same exported .tflite files.

    python benchmarks/mediapipe_parity.py --exports=exports/skin \
        --images=../shared/datasets/ham10000_200px/ISIC_2019_Training_Input --count=400

For every tflite_<kind>/<name>_<kind>.tflite under --exports: top-1 agreement and the largest and
median probability difference per image, (1) on the images as they are (MediaPipe resizes them
its way, bilinear without antialiasing) and (2) on the same images first resized to the model's
size by predict.py's own function and saved as PNG (both sides then read the same pixels).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image



def mediapipe_probabilities(model: Path, files: list[Path], class_names: list[str]) -> np.ndarray:
    import mediapipe  # pylint: disable=g-import-not-at-top
    from mediapipe.tasks import python as tasks  # pylint: disable=g-import-not-at-top
    from mediapipe.tasks.python import vision  # pylint: disable=g-import-not-at-top

    classifier = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
        base_options=tasks.BaseOptions(model_asset_path=str(model))))
    answers = np.zeros((len(files), len(class_names)), np.float32)
    try:
        for row, file in enumerate(files):
            result = classifier.classify(mediapipe.Image.create_from_file(str(file)))
            for category in result.classifications[0].categories:
                answers[row, class_names.index(category.category_name)] = category.score
    finally:
        classifier.close()
    return answers


def compare(ours: np.ndarray, theirs: np.ndarray) -> str:
    difference = np.abs(ours - theirs).max(axis=1)
    return (f"top-1 agreement {np.mean(ours.argmax(1) == theirs.argmax(1)):.4f}, "
            f"|dp| max {difference.max():.4f} median {np.median(difference):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exports", required=True, help="export.py's --output folder")
    parser.add_argument("--images", required=True, help="folder of JPEG/PNG images")
    parser.add_argument("--count", type=int, default=400, help="first N images, sorted by name")
    args = parser.parse_args()
    from skin_keras.data import pipeline  # pylint: disable=g-import-not-at-top
    from skin_keras.infer import files as predicting, load  # pylint: disable=g-import-not-at-top

    files = sorted(p for p in Path(args.images).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.count]
    models = sorted(Path(args.exports).glob("tflite_*/*.tflite"))
    if not files or not models:
        raise SystemExit(f"no images in {args.images} or no .tflite files in {args.exports}")
    with tempfile.TemporaryDirectory() as scratch:
        for model in models:
            loaded = load.load(model)
            resized = []
            for file in files:
                pixels = pipeline.load_image(str(file), loaded.img_size).numpy()
                resized.append(Path(scratch) / f"{file.stem}_{loaded.img_size}.png")
                if not resized[-1].exists():
                    Image.fromarray(np.round(pixels).astype(np.uint8)).save(resized[-1])
            for label, inputs in (("as they are", files), ("at the model's size", resized)):
                ours = predicting.predict_files(loaded, inputs, 32, show_progress=False)[0][
                    "probabilities"]
                theirs = mediapipe_probabilities(model, inputs, loaded.class_names)
                print(f"{model.name}, {len(inputs)} images {label}: {compare(ours, theirs)}",
                      flush=True)


if __name__ == "__main__":
    main()
