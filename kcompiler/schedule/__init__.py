"""The target-neutral kernel description (the ``scheduled`` stage): ``kernel.py`` holds its
loop-nest IR, ``scalar.py`` the scalar math of every element-wise op written once, and one
module per op family builds the description of that family's kernels (registered in the op
registry as ``Op.describe``). Backends render descriptions; contractions (GEMM, convolution,
the recurrent sequence kernels) stay templates per backend."""
from . import scalar  # noqa: F401
from . import elementwise  # noqa: F401
from . import movement  # noqa: F401
from . import pool  # noqa: F401
from . import reduce  # noqa: F401
from . import norm  # noqa: F401
from . import image  # noqa: F401
from . import batch_norm  # noqa: F401
from . import depthwise  # noqa: F401
from . import attention  # noqa: F401
