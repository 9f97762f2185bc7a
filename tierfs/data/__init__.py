"""Bytes for a range of an ObjectRef: blocks, single-flight, the block reader."""
