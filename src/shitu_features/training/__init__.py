"""shitu_features.training."""
