r"""Predicts the class of every image in files or folders with a trained model.

    python predict.py --model_path=runs/exp3 --source=inference/img --output=inference/out

--model_path is a run folder (weights/best.keras), a .keras file, or an exported SavedModel
folder or .tflite file. Writes predictions.csv (path,label,score,<one column per class>,error)
and predictions.json; unreadable files get an error row and the others are still predicted. A
model trained with patient metadata takes --metadata=CSV (predictions.csv then says per row
whether it was used).
--explain adds Grad-CAM overlays (output/explain/), --save_images labelled copies
(output/images/). The flags are the fields of skin_keras.infer.predict.PredictConfig.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli  # noqa: E402
from skin_keras.infer import predict  # noqa: E402

main = cli.script(predict.PredictConfig, predict.predict_to_folder)

if __name__ == "__main__":
    cli.run(main)
