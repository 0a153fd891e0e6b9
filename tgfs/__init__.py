"""tgfs: a FUSE filesystem that keeps a video library as HLS in Telegram and streams it."""

__version__ = "0.1.0"
