"""The backend contract suite (a package, so its modules' names are its own: ``backends.conftest``)."""
