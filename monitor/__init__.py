"""restrav-monitor: ReStraV AI-generated video detection as a library.

Importing this package does nothing but define names: no I/O, no model loading,
no environment reads. See ``monitor.core.pipeline`` for the stage order.
"""

__version__ = "0.1.0"

FEATURE_SPEC_VERSION = "restrav-21/1"
"""Version tag of the 21-feature layout (SPEC section 5) carried in every artifact."""
