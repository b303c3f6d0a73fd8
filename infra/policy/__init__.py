"""Policy pack: security rules every stack must pass (plain functions in `rules`, wrapped in `pack`)."""
