"""One place that imports compressai, quietly.

compressai's import triggers torch's FutureWarning about ``torch.jit.script``
(compressai still scripts a helper); it says nothing a splitserve user can act on.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN
    from compressai.ops.parametrizers import NonNegativeParametrizer

__all__ = ["GDN", "EntropyBottleneck", "NonNegativeParametrizer"]
