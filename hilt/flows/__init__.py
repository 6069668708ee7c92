"""Glue: flows that cross stages (the pipeline and its SageMaker export, the demo, the webhook
watcher, monitoring). Imports any stage; no stage imports it."""
