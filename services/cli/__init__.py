"""The `corral` command line: farm control over RPC, and the local farm's supervisor."""

import warnings

# eventlet (under nameko) warns that it is deprecated on every import; the pin is documented in
# pyproject.toml, and a user of the command can do nothing about it.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
