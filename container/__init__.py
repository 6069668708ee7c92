"""Serving and packaging: SageMaker inference contract, model.tar.gz, Marketplace requests."""
