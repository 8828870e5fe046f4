"""Step 2 of the pipeline: frozen backbones turn (prompt, response) text into feature vectors.

``backbones`` (aliases, any Hugging Face model, pooling), ``store`` (the on-disk feature
cache and :func:`extract`), ``packing`` (the padding-free forward, the default on CUDA where
supported), ``devices`` (which device each launched process's backbone takes).
"""

from distrm.features.store import STORE_DTYPES, Features, FeatureStore, StoredFeatures, extract, text_key  # noqa: F401
