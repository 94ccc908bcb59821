"""BraTS data: case discovery and validation, datalists with folds, the phantom generator."""
