"""Op families. Importing this package fills the registry (kcompiler.ir.registry.OPS).

Each family file declares its ops' shape rules, VJP rules and fusion kinds; the
``*_reference.py`` file beside it attaches their numpy references.
"""
from . import params, elementwise, reduce, linalg, array, nn, conv, pool, rnn, norm, image, batch_norm  # noqa: F401
from . import attention, depthwise  # noqa: F401
from . import fused, fused_contraction, collective  # noqa: F401
from . import params_reference, elementwise_reference, reduce_reference  # noqa: F401
from . import linalg_reference, array_reference, nn_reference  # noqa: F401
from . import conv_reference, pool_reference, rnn_reference, fused_reference  # noqa: F401
from . import fused_contraction_reference, norm_reference, image_reference, batch_norm_reference  # noqa: F401
from . import collective_reference  # noqa: F401
from . import attention_reference, depthwise_reference  # noqa: F401
