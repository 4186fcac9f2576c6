"""Images: reference checks, the signed reference store, imaging, thumbnails, address rules."""
