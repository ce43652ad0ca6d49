"""The code behind the template's entry points (app.py, download.py, gateway.py), one concern per module."""
