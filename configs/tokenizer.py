"""`--config configs/tokenizer.py:VARIANT[,key=value...]` from a checkout.

The tokenizer configs live in progvc_jax/configs/tokenizer.py, which installs with the
package; outside a checkout, `python -m progvc_jax.train` finds them under
this same path.
"""

from progvc_jax.configs.tokenizer import get_config, get_sweep

__all__ = ["get_config", "get_sweep"]
