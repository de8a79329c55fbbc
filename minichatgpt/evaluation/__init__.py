"""Evaluation and reports: a policy measured on held-out prompts (`evaluate`), the table, curves and samples
(`report`), where the reward went token by token (`token_view`), and a run's model as a Hugging Face folder
(`export_run`)."""
