"""Where blob bytes live: the `BlobStore` interface and its implementations."""
