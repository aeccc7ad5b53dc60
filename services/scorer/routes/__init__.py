"""HTTP routes of the scorer, one module per resource."""
