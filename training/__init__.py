"""Training side of hilt: recipes, the SageMaker training contract, trainers, artifacts."""
