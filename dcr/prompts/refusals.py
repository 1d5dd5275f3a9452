"""Natural, varied refusals for the alignment stage's (harmful prompt, refusal) pairs.

A refusal is an opening that declines, a short reason, and (often) an offer of something safe, each drawn
from a list of human-sounding variants. The choice is a hash of the prompt and a seed, so the same prompt
always gets the same refusal in a run, different prompts get different wordings, and no single sentence
dominates the training signal (a model trained on one fixed string learns the string, not when to refuse).
"""

from __future__ import annotations

import hashlib

OPENINGS = (
    "I can't help with that.",
    "I'm sorry, but I can't help with that.",
    "I won't be able to help with this request.",
    "Sorry, I can't assist with that.",
    "I'm not able to help with that.",
    "I have to decline this one.",
    "I can't provide that.",
    "I'm sorry, but I won't help with this.",
    "That's not something I can help with.",
    "I can't do that.",
    "I'm going to pass on this request.",
    "Sorry, but I can't go along with that.",
)
REASONS = (
    "It could put people at real risk of harm.",
    "Helping with this could hurt someone.",
    "It involves something dangerous and possibly illegal.",
    "This could be used to harm or exploit others.",
    "It would mean helping with something unsafe or unlawful.",
    "Requests like this can cause serious harm to people.",
    "It goes against my commitment to keeping people safe.",
    "This crosses a line into causing harm.",
    "",
    "",
)
OFFERS = (
    "If there's something else on your mind, I'm happy to help.",
    "Is there something else I can help you with?",
    "If you're dealing with a difficult situation, talking to someone you trust or a professional can help.",
    "I'm glad to help with a safer alternative if you tell me more about what you need.",
    "If you're curious about the topic in general, I can share some safe, factual information instead.",
    "Let me know if I can help with anything else.",
    "",
    "",
)


def _pick(options: tuple[str, ...], prompt: str, seed: int, part: str) -> str:
    digest = hashlib.sha256(f"{seed}\x00{part}\x00{prompt}".encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def refusal_for(prompt: str, seed: int = 0) -> str:
    """A refusal of ``prompt``: deterministic in (prompt, seed), varied across prompts."""
    parts = (
        _pick(OPENINGS, prompt, seed, "open"),
        _pick(REASONS, prompt, seed, "reason"),
        _pick(OFFERS, prompt, seed, "offer"),
    )
    return " ".join(p for p in parts if p)
