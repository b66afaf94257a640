"""shitu_features.losses."""
