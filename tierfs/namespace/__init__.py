"""What a path means: the live view, inodes, cached listings."""
