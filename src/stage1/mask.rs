//! Per-pixel masks (`roi.hotpixel_mask`): **true = good pixel**.
//!
//! \[TRAP\] decided: diffBragg loads the DIALS mask pickle as `is_trusted`
//! (True = good), whatever its help text says; DIALS masks mean the same. We
//! keep that polarity.
//!
//! The file formats (NPY, HDF5; a DIALS pickle refused with the conversion
//! command) are [`crate::io::mask`]'s; this module only checks the mask
//! against the detector and looks pixels up.

use std::path::Path;

use crate::error::{Error, Result};
pub use crate::io::mask::parse_npy;
use crate::io::mask::read_mask;

/// A mask: one `Vec<bool>` per panel, row-major `(slow, fast)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelMask {
    pub panels: Vec<Vec<bool>>,
    /// `(n_slow, n_fast)` of every panel.
    pub shape: (usize, usize),
}

impl PixelMask {
    /// Read a mask file ([`crate::io::mask`]) and check it against the panel
    /// sizes `(n_fast, n_slow)` of the detector.
    pub fn read(path: &Path, panels: &[[usize; 2]]) -> Result<PixelMask> {
        let m = read_mask(path)?;
        if m.panels.len() != panels.len() {
            return Err(Error::file(
                path,
                format!("mask has {} panel(s), the detector {}", m.panels.len(), panels.len()),
            ));
        }
        for (i, (mp, p)) in m.panels.iter().zip(panels).enumerate() {
            if [mp.n_fast, mp.n_slow] != *p {
                return Err(Error::file(
                    path,
                    format!(
                        "mask panel {i} is {}×{} (fast×slow), detector panel {i} is {}×{}",
                        mp.n_fast, mp.n_slow, p[0], p[1]
                    ),
                ));
            }
        }
        // ROI lookups index every panel with one shape.
        if m.panels.windows(2).any(|w| (w[0].n_slow, w[0].n_fast) != (w[1].n_slow, w[1].n_fast)) {
            return Err(Error::file(path, "hot-pixel masks need panels of one size"));
        }
        let shape = m.panels.first().map(|p| (p.n_slow, p.n_fast)).unwrap_or((0, 0));
        Ok(PixelMask { panels: m.panels.into_iter().map(|p| p.trusted).collect(), shape })
    }

    /// Whether pixel (fast, slow) of `panel` is good.
    pub fn good(&self, panel: usize, fast: usize, slow: usize) -> bool {
        self.panels[panel][slow * self.shape.1 + fast]
    }
}
