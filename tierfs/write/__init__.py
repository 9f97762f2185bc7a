"""The live view's write path: staged files, uploads on close and fsync, renames."""
