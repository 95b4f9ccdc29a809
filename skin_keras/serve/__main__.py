"""Serves a model: a web page to drop images on, and TF Serving's REST API (as serve.py).

    python -m skin_keras.serve --model_path=runs/exp3

The flags are the fields of skin_keras.serve.server.ServeConfig; serve.py's docstring says more.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow.

from skin_keras.core import cli  # noqa: E402
from skin_keras.serve import server  # noqa: E402

main = cli.script(server.ServeConfig, server.serve)

if __name__ == "__main__":
    cli.run(main)
