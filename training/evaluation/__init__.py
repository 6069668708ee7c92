"""Scoring models: held-out loss and task metrics with gates (``hilt evaluate``), general skills
(forgetting, self-replay), and the loader and greedy answers evaluation uses."""
