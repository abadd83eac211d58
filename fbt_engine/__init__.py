"""FBT engine: Fuse Before Transfer heterogeneous distillation on timm models.

Importing this package is cheap: torch and timm load only when a submodule that needs them is
imported (config, events and errors are stdlib-only so the TUI can use them).
"""

__version__ = "0.1.0"
