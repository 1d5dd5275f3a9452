"""The training-free rival of DCR: ablating a false-refusal direction from an aligned model's weights."""
