"""Reporting: the static HTML report (page, sections), gallery.png (gallery), example images (images)."""
