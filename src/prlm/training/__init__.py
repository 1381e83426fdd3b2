"""Training the policy: a short supervised warm-up of the format, then GRPO through TRL."""
