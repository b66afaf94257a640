"""shitu_features.data."""
