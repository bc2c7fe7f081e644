"""Data, front end, models and training of the speech-emotion models (stage 1 of the pipeline)."""
