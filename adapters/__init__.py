"""Adapters the tasks use: settings, the Redis store, partner clients, broker hardening.

They sit between the pure domain (`process_manager/`) and the Celery tasks (`tasks/`): they may
import the domain, never the tasks or the doors (`vip_bundles/`).
"""
