"""Models: loading (local folder, Hub cache, embedded default), chat rendering, layer-l truncation and pooling,
trainable parts, export.
"""
