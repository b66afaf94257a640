"""shitu_features.models."""
