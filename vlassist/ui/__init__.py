"""Streamlit page helpers for the vlassist app: chat view, sidebar, settings panel, model status."""
