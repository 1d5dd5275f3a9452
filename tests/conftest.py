import os
import sys

import torch

# Without a GPU the Triton kernels run in the Triton interpreter, which must be switched on before any
# kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Shared helpers: spawning ranks (here), the kernel test cases and float64 oracle (kernels/), tiny models and
# prompt files (dcr/).
HERE = os.path.dirname(__file__)
sys.path[:0] = [HERE, os.path.join(HERE, "kernels"), os.path.join(HERE, "dcr")]
