"""See skin_keras/__init__.py for what this package holds and may import."""
