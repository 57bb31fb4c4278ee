"""Conversation history in SQLite and its exports."""
