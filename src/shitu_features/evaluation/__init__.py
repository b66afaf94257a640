"""shitu_features.evaluation."""
