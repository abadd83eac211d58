"""Reusable widgets: the pair header, charts, the system monitor, modals."""
