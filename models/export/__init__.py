"""Exporting trained models with their pre- and post-processing inside the graph (issue 22)."""
