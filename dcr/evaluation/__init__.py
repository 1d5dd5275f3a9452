"""Evaluation: generation, the refusal judge, representation separation, perplexity, reports and plots."""
