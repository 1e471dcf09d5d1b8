//! Pull progress output (filled in below).
