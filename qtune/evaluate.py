"""End-of-training evaluation: eval loss (and accuracy) from the last validation, plus greedy
exact match for SFT tasks that carry references."""

from __future__ import annotations

from typing import Any


def uses_hf_generate(bundle) -> bool:
    """A Hugging Face tokenizer means an HF model (``model=hf``): decode with ``generate``; the
    built-in character model keeps qtune's own KV-cached greedy loop."""
    from qtune.data.tokenizer import CharTokenizer

    return bundle.tokenizer is not None and not isinstance(bundle.tokenizer, CharTokenizer)


def final_evaluation(trainer, module, bundle, eval_cfg) -> dict[str, Any]:
    metrics = trainer.callback_metrics
    out: dict[str, Any] = {}
    if "eval/loss" in metrics:
        out["loss"] = float(metrics["eval/loss"])
    if bundle.task == "classify" and "eval/accuracy" in metrics:
        out["accuracy"] = float(metrics["eval/accuracy"])
    if (bundle.task == "sft" and bundle.generation is not None and eval_cfg.get("exact_match", True)
            and trainer.is_global_zero):
        from qtune.evaluation import greedy_exact_match

        gen = bundle.generation
        limit = eval_cfg.get("max_items")
        if limit:
            gen = type(gen)(gen.prompt_ids[:limit], gen.target_ids[:limit],
                            gen.groups[:limit] if gen.groups else None, gen.max_new_tokens)
        was_training = module.training
        module.eval()
        if uses_hf_generate(bundle):
            from qtune.evaluation_hf import hf_exact_match

            result = hf_exact_match(module.model, gen, eos_id=bundle.eos_id, pad_id=bundle.pad_id,
                                    batch_size=int(eval_cfg.get("batch_size") or 64))
        else:
            result = greedy_exact_match(module.model, gen, eos_id=bundle.eos_id,
                                        pad_id=bundle.pad_id)
        module.train(was_training)
        out["exact_match"] = float(result["exact_match"])
        out["exact_match_per_skill"] = {k: float(v) for k, v in result.get("per_group", {}).items()}
    return out
