"""Xen's legacy (pre-4.6) libxc save/restore stream: format, reader, writer."""
