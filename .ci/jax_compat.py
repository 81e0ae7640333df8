"""pytest plugin for the minimum-versions environment (.ci/package_smoke.sh): jax 0.6.

The tests spell the 64-bit context manager `jax.enable_x64`, its name since jax 0.7; in
jax 0.6 the same context manager is `jax.experimental.enable_x64`. costjax itself uses
neither. Loaded with `-p jax_compat` (PYTHONPATH=.ci) only in that environment.
"""

import jax
import jax.experimental

if not hasattr(jax, "enable_x64"):
  jax.enable_x64 = jax.experimental.enable_x64
