"""Dataset versions: manifests, snapshot create/list/diff/delete, and gc of copies."""
