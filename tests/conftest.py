"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere.

Compiled programs are cached on disk (shared with the subprocesses tests
start), so a trainer built twice with one config compiles once, and each
command-line run after the first loads the codec's steps.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Where the TPU compiler (libtpu) is installed, test processes running at once each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "progvc-test-jax-cache"))
# Every compiled program, however quick to compile: the command-line tests' subprocesses each compile the
# codec's steps, and from the cache a second one runs in half the time.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: compiles training steps, runs subprocesses or decodes whole clips; "
      "`python -m pytest -m 'not slow' tests` leaves these out for everyday work")
