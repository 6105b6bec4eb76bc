"""The license service's package: `nameko run services.license` finds LicenseService here."""

from services.license.service import LicenseService

__all__ = ["LicenseService"]
