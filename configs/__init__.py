"""Configs: one module per task, each `get_config(arg=None) -> ml_collections.ConfigDict`.

`arg` selects a variant: "tiny" (the size every test uses), "paper" (the paper's settings) or the
default (what the CLI runs). Override from the CLI with `--config.key=value`.
"""
