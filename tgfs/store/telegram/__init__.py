"""The Telegram store: kurigram clients bridged to trio, one link per bot."""
