"""The resource negotiator's package: `nameko run services.resource_negotiator` finds its service here."""

from services.resource_negotiator.service import ResourceNegotiatorService

__all__ = ["ResourceNegotiatorService"]
