"""`--config configs/context.py:VARIANT[,key=value...]` from a checkout.

The context configs live in progvc_jax/configs/context.py, which installs with the
package; outside a checkout, `python -m progvc_jax.train` finds them under
this same path.
"""

from progvc_jax.configs.context import get_config, get_sweep

__all__ = ["get_config", "get_sweep"]
