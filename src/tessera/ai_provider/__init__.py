"""The AI provider's side: build, sign and submit a job, watch its rounds, fetch the model."""
