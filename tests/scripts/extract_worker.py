"""Helper for the feature-store tests: extract features for the first N HH-RLHF pairs.
Run as a plain process (kill/resume test) or under `accelerate launch` (data parallel)."""

import sys

import numpy as np

from distrm.features.backbones import Backbone
from distrm.data import registry
from distrm.features import extract

store, n, shard, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pairs = registry.load_pairs("hh-rlhf").records[:n]
bb = Backbone.from_pretrained("minilm", device="cpu", max_length=128)
f = extract(bb, [p.prompt for p in pairs], [p.chosen for p in pairs], store=store, batch_size=8, shard_size=shard, progress=False)
if out != "-":
    np.save(out, f.reward)
print(f"computed={f.n_computed} cached={f.n_cached}", flush=True)
