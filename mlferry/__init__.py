"""mlferry: ferries MLflow model versions to Kubernetes through git.

One import name for the whole product: `mlferry.steps` (the work, from `steps/`),
`mlferry.workflows` and `mlferry.sensors` (the Hera definitions), `mlferry.engine` (the local
Argo engine) and the CLI modules beside this file. This root holds only the version, so every
room may read it without importing any other room.
"""

# One version for the package, the steps image and the WorkflowTemplates that run it.
__version__ = "0.1.0"
