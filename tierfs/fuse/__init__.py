"""Kernel boundary: pyfuse3 Operations, attributes, mountpoints. No storage I/O."""
