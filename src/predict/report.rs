//! Report figures of `diffbragg integrate` (filled in below).
