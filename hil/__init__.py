"""Label Studio side of hilt: templates, import, export to datasets, quality."""
