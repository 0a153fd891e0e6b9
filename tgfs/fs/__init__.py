"""The FUSE side: pyfuse3 handlers and the helpers they share."""
