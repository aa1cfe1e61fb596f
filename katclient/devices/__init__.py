"""Virtual KATCP devices backed by foreign protocols (DESIGN.md section 4)."""
