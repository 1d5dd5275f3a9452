"""Prompt data: the shipped labelled sets, the class-balanced sampler, the SFT mix with its refusals, evaluation
sets, matched twins.
"""
