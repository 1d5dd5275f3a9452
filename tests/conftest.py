import os
import sys

import torch

# Without a GPU the Triton kernels run in the Triton interpreter, which must be switched on before any
# kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))
