"""The diagnosis models: classifiers of compressed or low-resolution images (MLCAK, CT-Lite)."""
