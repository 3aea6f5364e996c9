"""Packets to committed rows: intake.py (the one call per packet) -> rows.py / layout.py (rows,
compiled layouts) -> writer.py (the batch writer: confirms after COMMIT; items.py: what goes in
and comes out); side_writes.py (sightings, connection log); splits.py (split transfer assembly).
"""
