"""The scheduler service's package: `nameko run services.scheduler` finds SchedulerService here."""

from services.scheduler.service import SchedulerService

__all__ = ["SchedulerService"]
