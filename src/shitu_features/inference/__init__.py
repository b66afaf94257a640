"""shitu_features.inference."""
