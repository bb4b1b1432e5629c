"""Feature interpretation: explain coder features with an LLM and score the explanations.

Two modes: ``comsem`` reproduces the paper's ComSem procedure; ``default`` is a binary-aware detection scorer
with negatives, prevalence-corrected precision, Wilson intervals, a lexical baseline and controls.
"""
