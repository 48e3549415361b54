"""Evaluation: text metrics, greedy generation (qtune's KV-cached loop and transformers'
``generate``), the end-of-training evaluation and lm-evaluation-harness with qtune's tasks."""
