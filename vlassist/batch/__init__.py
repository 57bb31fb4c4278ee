"""`vlassist batch`: one task over folders of images and PDF pages, into resumable JSONL or CSV."""
