"""GRPO fine-tuning of memr1's two agents on LoCoMo, and export of the result to GGUF.

Prompts, schemas and parsers come from `memr1.prompts` and scores from `memr1.scoring`,
so training, evaluation and inference read and judge model output the same way. See README.md.
"""
