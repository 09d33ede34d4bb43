"""The compression models: per-image INR fits (SIREN, UniCompress and its student and prior) and the trained 2-D
codecs (CAL-VAE, RNN-Conv), with the extractor pretraining UniCompress uses."""
