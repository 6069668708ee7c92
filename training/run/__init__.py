"""Running a SageMaker training job: the ``train`` entry point and its torchrun workers, several hosts, what a
resume may reuse, and finishing /opt/ml/model (merged weights, hilt.json, the card, plots). The top of
``training/``: it uses every part below it."""
