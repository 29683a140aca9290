"""restorekit: diffusion image restoration methods behind one interface.

>>> from restorekit import Restorer
>>> r = Restorer.from_pretrained("diffpir-demo")          # bundled demo prior
>>> from restorekit.operators import Blur, gaussian_kernel
>>> out = r.restore(img, task="deblur", operator=Blur(gaussian_kernel(61, 3.0)), steps=50, seed=0)
"""

__version__ = "0.1.0"

from .nets._compat import quiet_bitsandbytes_kernel_note  # noqa: E402

quiet_bitsandbytes_kernel_note()  # before pyiqa / diffusers import bitsandbytes

from .api import Restorer  # noqa: E402
from .errors import ConfigError, ImageReadError, RestoreKitError, TaskError, WeightsError  # noqa: E402
from .registry import available_methods, model_cards  # noqa: E402

__all__ = ["Restorer", "RestoreKitError", "ImageReadError", "WeightsError", "TaskError", "ConfigError",
           "available_methods", "model_cards", "__version__"]
