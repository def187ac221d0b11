"""vmctl: boots a minimal Linux VM under QEMU and serves its container engine on the host."""

__version__ = "0.1.0"
