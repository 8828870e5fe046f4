"""Step 2 of the pipeline: frozen backbones turn (prompt, response) text into feature vectors.

``backbones`` (aliases, any Hugging Face model, pooling), ``store`` (the on-disk feature
cache and :func:`extract`), ``packing`` (the padding-free forward for CUDA).
"""

from distrm.features.store import Features, FeatureStore, extract, text_key  # noqa: F401
