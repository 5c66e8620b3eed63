"""The pure rollout core: spec, sticky split, figures, gates, the state machine."""
