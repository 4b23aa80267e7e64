//! Hot-pixel masks: NPY and HDF5 written by numpy/h5py are read with the
//! right polarity (true = good); a DIALS pickle is refused with a conversion
//! recipe; corrupted files never panic.

use diffbragg::stage1::mask::{parse_npy, PixelMask};
use std::path::Path;

fn python(code: &str) {
    let out = std::process::Command::new("python3").arg("-c").arg(code).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn numpy_and_h5py_masks_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (npb, npi, h5) = (d.join("m_bool.npy"), d.join("m_int.npy"), d.join("m.h5"));
    python(&format!(
        "import numpy as np, h5py\n\
         m = np.ones((2, 3, 4), bool); m[0, 1, 2] = False; m[1, 2, 3] = False\n\
         np.save('{}', m)\n\
         np.save('{}', m.astype(np.int32)[1])\n\
         h5py.File('{}', 'w').create_dataset('mask', data=m.astype(np.uint8))\n",
        npb.display(),
        npi.display(),
        h5.display()
    ));
    let dims = [[4, 3], [4, 3]];
    for p in [&npb, &h5] {
        let m = PixelMask::read(p, &dims).unwrap();
        assert!(!m.good(0, 2, 1) && !m.good(1, 3, 2), "{}", p.display());
        assert_eq!(m.panels.iter().flatten().filter(|&&g| !g).count(), 2);
    }
    let m = PixelMask::read(&npi, &[[4, 3]]).unwrap();
    assert!(!m.good(0, 3, 2) && m.good(0, 0, 0));
    // Wrong detector: one clear error naming the file.
    let e = PixelMask::read(&npb, &[[4, 3]]).unwrap_err().to_string();
    assert!(e.contains("m_bool.npy") && e.contains("panel"), "{e}");
    let e = PixelMask::read(&npb, &[[3, 4], [3, 4]]).unwrap_err().to_string();
    assert!(e.contains("4×3"), "{e}");
}

#[test]
fn pickles_are_refused_with_a_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("hot.mask");
    python(&format!("import pickle; pickle.dump((True, [1, 2]), open('{}', 'wb'), protocol=2)", p.display()));
    let e = PixelMask::read(&p, &[[4, 3]]).unwrap_err().to_string();
    assert!(e.contains("hot.mask") && e.contains("pickle") && e.contains("np.save"), "{e}");
}

#[test]
fn corrupted_npy_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.npy");
    python(&format!("import numpy as np; np.save('{}', np.ones((2, 5, 7), bool))", p.display()));
    let good = std::fs::read(&p).unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for i in 0..3000 {
        let mut b = good.clone();
        match i % 3 {
            0 => b.truncate((next() as usize) % b.len()),
            1 => {
                let k = (next() as usize) % b.len();
                b[k] ^= 1 << (next() % 8);
            }
            _ => {
                for _ in 0..4 {
                    let k = (next() as usize) % 128.min(b.len());
                    b[k] = next() as u8;
                }
            }
        }
        let r = std::panic::catch_unwind(|| parse_npy(&b, Path::new("m.npy")));
        match r.expect("parse_npy panicked") {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    assert!(err > 100 && ok > 100, "ok {ok}, err {err}");
}
