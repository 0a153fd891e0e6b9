"""Ingest: dropped file (spool) → media child process → store → catalog."""
