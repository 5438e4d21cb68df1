"""Model zoo and training."""
