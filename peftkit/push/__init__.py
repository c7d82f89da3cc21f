"""`peftkit push`: stage a run folder and upload it to the hub (`hub`) with a model card (`card`).

Imports: `tasks/` and everything below it.
"""
