"""What is done with model text: parsing, boxes, tables, HTML, schemas, presets (no torch)."""
