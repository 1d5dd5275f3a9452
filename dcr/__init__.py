"""DCR training layer: contrastive refinement of causal LMs at one layer against over-refusal.

Rooms: `modeling` (loading, layer-l states, trainable parts, export), `prompts` (shipped prompt sets,
sampler, SFT mix), `training` (one loop, the DCR and alignment stages), `evaluation` (generation, refusal
judge, separation, reports), `pipeline` (profiles, arms, comparison), `cli` (the `dcr` command). The
shipped prompt sets live in `data/` (DATA_DIR).
"""

from pathlib import Path

__version__ = "0.1.0"
DATA_DIR = Path(__file__).parent / "data"
