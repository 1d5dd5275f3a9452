"""The two training stages (DCR refinement and alignment) on one training loop, with their configs, losses,
gradient caching and checkpoints.
"""
