"""Named factories for swappable components (depth estimators, inpainters, and later learned nets)."""


class Registry:
    """Maps a name to `factory(**kwargs) -> component`; `get` builds one, with a clear error for unknown
    names. `kind` names the component in messages ("depth estimator", "inpainter", ...)."""

    def __init__(self, kind):
        self.kind = kind
        self._factories = {}

    def register(self, name, factory):
        """Register `factory(**kwargs)` under `name` (e.g. a loader of a learned model taking a path)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        self._factories[name] = factory
        return factory

    def get(self, name, **kwargs):
        """Build the component registered as `name` with keyword arguments `kwargs`."""
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self._factories)}")
        return self._factories[name](**kwargs)

    def names(self):
        return sorted(self._factories)
