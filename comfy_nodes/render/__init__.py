"""Renderers: the console summary (text.py) and the report as text, Markdown, HTML or JSON (report.py)."""
