"""Teacher models: loading by name or folder, and task fine-tuning."""
