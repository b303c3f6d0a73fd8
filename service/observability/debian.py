"""`/etc/default/<package>` files for Debian/Ubuntu's Prometheus and Alertmanager packages (their units pass $ARGS)."""

from __future__ import annotations


def defaults_file(args: list[str], comment: str) -> str:
    """ARGS for the packaged unit: the rendered flags less --config.file (the package names its own config path)."""
    kept = " ".join(a for a in args if not a.startswith("--config.file"))
    return f'# {comment}\nARGS="{kept}"\n'
