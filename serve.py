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

import runpy

if __name__ == "__main__":  # The script is the package's __main__ (python -m skin_keras.serve).
    runpy.run_module("skin_keras.serve", run_name="__main__")
