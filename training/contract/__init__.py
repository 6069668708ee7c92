"""The SageMaker training job contract: what a job reads from /opt/ml (the recipe, the job), how it runs
(``train``, its workers, several hosts, SIGTERM) and what it leaves (the model directory, tracking)."""
