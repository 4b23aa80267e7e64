//! Crystallographic symmetry: exact operations, Hall symbols, the 230 space
//! groups (530 tabulated settings), the CCP4 reciprocal ASU and Miller sets.
//!
//! Submodules, one concept each (conventions at the top of each):
//! * [`op`]: `Op`, exact in units of 1/24; Miller indices transform as `h·R`.
//! * [`group`]: primitive operations × centring vectors; Dimino closure.
//! * [`hall`]: Hall symbols, including the `(x,y,z+5/12)` change of basis.
//! * [`spacegroup`]: the settings table, lookups, classification, and the
//!   conventional→primitive basis used for diffBragg's `O` matrix.
//! * [`asu`]: CCP4 reciprocal ASU with MTZ ISYM codes.
//! * [`miller`]: unique reflections, P1 expansion, centric flags, resolution.
//!
//! Typical use:
//! ```
//! use diffbragg::symmetry::{ReciprocalAsu, SpaceGroup};
//! let sg = SpaceGroup::from_hall(" P 4nw 2abw").unwrap(); // from a DIALS .expt
//! assert_eq!(sg.hm(), "P 43 21 2");
//! let asu = ReciprocalAsu::new(&sg);
//! assert_eq!(asu.to_asu(&[-3, 1, -5]).0, [3, 1, 5]);
//! ```

pub mod asu;
pub mod group;
pub mod hall;
pub mod miller;
pub mod op;
pub mod spacegroup;
mod tables;

pub use asu::ReciprocalAsu;
pub use group::GroupOps;
pub use hall::parse_hall;
pub use op::{Miller, Op, DEN};
pub use spacegroup::{settings, CrystalSystem, PointGroup, PrimitiveBasis, Setting, SpaceGroup};
