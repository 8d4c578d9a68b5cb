"""Serving: ensembles that stay deployed (issue 15); see SERVE-DESIGN and README "Serving"."""
