"""AdminService: API tokens and the audit trail (CreateToken, ListTokens,
RotateToken, RevokeToken, ListAudit)."""

from __future__ import annotations

from pointsd.service.app import App

__all__ = ["TokenAdmin"]


class TokenAdmin:
    app: App
