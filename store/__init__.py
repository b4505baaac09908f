"""Crystalline CLLM store: SQLAlchemy models, engine factory, migrations and history queries."""
