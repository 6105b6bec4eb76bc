"""The cleanup service's package: `nameko run services.cleanup` finds CleanupService here."""

from services.cleanup.service import CleanupService

__all__ = ["CleanupService"]
