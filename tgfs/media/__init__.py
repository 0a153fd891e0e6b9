"""Media work: probe, copy-or-transcode to HLS, codec strings, playlist rendering.

Everything here except `playlists` runs in the media child process (`worker`), never in the
FUSE daemon: a decoder crash on a hostile file ends one job, not the mount.
"""
