"""Tasks: what a model learns (classification, regression, multilabel), its loss and its metrics as named sums."""
