"""What a training job is, which every other part of ``training/`` stands on: the recipe schema, the methods
table, the ``Job`` read from /opt/ml, stopping on SIGTERM and experiment tracking."""
