r"""Serves a model to people and programs: a web page to drop images on, and TF Serving's REST API.

    python serve.py --model_path=runs/exp3
    # page: http://127.0.0.1:8000/   API: POST http://127.0.0.1:8000/v1/models/skin:predict

--model_path is anything predict.py takes (run folder, .keras, SavedModel, .tflite, .onnx). The
page shows each image's label, calibrated probabilities, the "unknown" flag and a Grad-CAM
overlay (Keras models), and downloads the batch as predictions.csv. The API takes TF Serving's
request bodies ({"instances": [{"b64": "..."}]}) and answers as the exported SavedModel does.
Listens on 127.0.0.1 unless --host says otherwise (then --token or $SKIN_KERAS_TOKEN is
required). The flags are the fields of skin_keras.serve.server.ServeConfig.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli
from skin_keras.serve import server

main = cli.script(server.ServeConfig, server.serve)

if __name__ == "__main__":
    cli.run(main)
