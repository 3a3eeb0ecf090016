"""A local server implementing the HiDream "model image set" API, for the demo and tests.

Importing this package is cheap: it does not import Prefect.
"""

from modelset.sandbox.app import create_app
from modelset.sandbox.config import Faults, SandboxConfig, parse_faults
from modelset.sandbox.server import SandboxServer, serve

__all__ = ["Faults", "SandboxConfig", "SandboxServer", "create_app", "parse_faults", "serve"]
