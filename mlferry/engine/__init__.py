"""The local Argo engine: runs generated Argo YAML as local processes, one Argo concept per module.

It knows Argo, not promotions: nothing here imports the steps, the Hera definitions or the CLI.
"""
