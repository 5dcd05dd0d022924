"""AdminService: farming flags held for review (ListFlags, ReleaseFlag,
VoidFlag)."""

from __future__ import annotations

from pointsd.service.app import App

__all__ = ["FlagAdmin"]


class FlagAdmin:
    app: App
