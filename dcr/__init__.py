"""DCR training layer: contrastive refinement of causal LMs at one layer against over-refusal.

Submodules by role: `prompts`/`sampler` (data), `model`/`representation`/`embedding` (model and layer-l
states), `refine` (the DCR stage), `separation` (representation metrics), `cli` (the `dcr` command).
"""
