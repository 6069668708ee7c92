"""The floor every stage stands on: errors, the /opt/ml contract, the dataset and model-dir layout,
output-folder safety, and the AWS request helpers. Imports nothing of hilt's above it."""
