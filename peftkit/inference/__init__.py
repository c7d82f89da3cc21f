"""A finished run loaded for prediction (`runs`), the batched forward passes (`forward`), and a run used as
a teacher for distillation (`teacher`). The HTTP server (`serve/`) and distillation both build on it.

Imports: everything below `tasks/` (never `tasks/` or a command folder).
"""
