"""The work of a promotion, one module per step; see DESIGN.md."""

# One version for the package, the steps image and the WorkflowTemplates that run it.
__version__ = "0.1.0"
