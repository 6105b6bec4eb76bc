"""The registry service's package: `nameko run services.registry` finds RegistryService here."""

from services.registry.service import RegistryService

__all__ = ["RegistryService"]
