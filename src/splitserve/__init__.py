"""splitserve: split-computing inference between a device and a GPU edge server."""

__version__ = "0.1.0"
