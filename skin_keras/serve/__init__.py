"""The server: a web page and TF Serving's REST API for any model predict.py takes."""
