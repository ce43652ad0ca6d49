"""Banana's v4 REST API (start/check, callIDs, long polling) in front of app.py replicas. Never imports torch."""
