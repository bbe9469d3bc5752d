"""The work of a promotion, one module per step; see DESIGN.md."""
